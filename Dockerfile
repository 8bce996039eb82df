# EventFlow's one image: the web app (gunicorn, the default command), the worker and the
# migration all run from it; docker-compose.yml picks the command per service.
#
#   docker build -t eventflow .
#   docker run -e DATABASE_URL=... -e REDIS_URL=... \
#     -e SECRET_KEY=... -e JWT_SECRET_KEY=... -p 5000:5000 eventflow
#
# The image runs in production (EVENTFLOW_ENV=production): a container started without
# SECRET_KEY and JWT_SECRET_KEY of 32+ bytes each refuses to start, naming the missing one,
# instead of signing sessions and tokens with the development defaults anyone can read.
# Only `-e EVENTFLOW_ENV=development` brings the defaults back, e.g. to try the image locally.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GUNICORN_BIND=0.0.0.0:5000 \
    EVENTFLOW_ENV=production

WORKDIR /app

# Dependencies first: a code change then reuses this layer instead of reinstalling.
# gunicorn's C HTTP parser (gunicorn_h1c) may come as source: a compiler for the install only.
COPY requirements.txt .
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && pip install -r requirements.txt \
    && apt-get purge -y gcc libc6-dev && apt-get autoremove -y && rm -rf /var/lib/apt/lists/*

# The code stays owned by root (read-only to the app); only instance/ is the app's to write.
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin eventflow
COPY . .
RUN mkdir -p instance && chown eventflow:eventflow instance
USER eventflow

EXPOSE 5000
CMD ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
