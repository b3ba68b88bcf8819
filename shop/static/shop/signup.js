/* Sign-up: create the account with POST /users/, then sign in with the same form. */
"use strict";

(function () {
  var form = document.getElementById("signup-form");
  var error = document.getElementById("signup-error");
  var button = document.getElementById("sign-up");
  if (!form) { return; }
  var LABELS = {username: "Username", password: "Password"};

  /* The API's own words: its message, or each field's errors for malformed input. */
  function messageOf(body) {
    if (!body) { return "The account could not be created. Please try again."; }
    var fields = Object.keys(LABELS).filter(function (name) {
      return Array.isArray(body[name]);
    });
    if (fields.length) {
      return fields.map(function (name) {
        return LABELS[name] + ": " + body[name].join(" ");
      }).join(" ");
    }
    return body.message || "The account could not be created. Please try again.";
  }

  function failed(text) {
    button.disabled = false;
    shop.show(error, text);
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    error.hidden = true;
    button.disabled = true;
    var credentials = {username: form.elements.username.value,
                       password: form.elements.password.value};
    shop.api("POST", form.dataset.usersUrl, credentials).then(function (result) {
      if (result.status === 201) {
        form.elements.username.value = result.body.username;  // the name as stored
        button.textContent = "Signing in…";
        form.submit();  // the sign-in view starts the session and goes on to `next`
        return;
      }
      failed(messageOf(result.body));
    }, function () {
      failed("The shop cannot be reached. Please check your connection.");
    });
  });
})();
