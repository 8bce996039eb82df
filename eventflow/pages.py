"""A numbered page of any listing (audit log, bulk actions, error groups): its items and total."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
# Numbered pages reach this many rows deep (page * limit); the event listings page deeper by
# cursor (events.MAX_PAGE_DEPTH is the same bound).
MAX_PAGE_DEPTH = 10_000


@dataclass(frozen=True)
class NumberedPage(Generic[T]):
    items: list[T]
    page: int
    limit: int
    total: int

    @property
    def pages(self) -> int:
        return math.ceil(self.total / self.limit) if self.total else 0

    @property
    def deepest_page(self) -> int:
        """The last page that may be asked for (the dashboard's pager stops there)."""
        return max(1, MAX_PAGE_DEPTH // self.limit)
