// /api/docs: Swagger UI on the document the app generates (no inline script: the page's CSP).
(function () {
  "use strict";
  var root = document.getElementById("swagger-ui");
  window.SwaggerUIBundle({
    url: root.dataset.document,
    domNode: root,
    deepLinking: true,
    // No badge from the public validator: the page may only talk to this origin.
    validatorUrl: null,
    tryItOutEnabled: false,
    persistAuthorization: false,
  });
})();
