/* Shared helpers: JSON calls to the shop API with the session and its CSRF token. */
"use strict";

window.shop = (function () {
  function csrfToken() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  }

  /* Resolves to {status, body}; body is the parsed JSON or null. Rejects on network errors. */
  function api(method, url, data) {
    var options = {
      method: method,
      credentials: "same-origin",
      headers: {"Accept": "application/json", "X-CSRFToken": csrfToken()},
      cache: "no-store",
    };
    if (data !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(data);
    }
    return fetch(url, options).then(function (response) {
      return response.text().then(function (text) {
        var body = null;
        try { body = text ? JSON.parse(text) : null; } catch (e) { body = null; }
        return {status: response.status, body: body};
      });
    });
  }

  function show(element, text) {
    element.textContent = text;
    element.hidden = false;
  }

  return {api: api, show: show};
})();
