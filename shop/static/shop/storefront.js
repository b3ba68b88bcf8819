/* Product list: "Place order" posts the chosen quantities to /orders/. */
"use strict";

(function () {
  var form = document.getElementById("order-form");
  var button = document.getElementById("place-order");
  var message = document.getElementById("order-message");
  if (!form || !button) { return; }

  function chosenItems() {
    var items = [];
    form.querySelectorAll("input.qty").forEach(function (input) {
      var count = parseInt(input.value, 10);
      if (count > 0) { items.push({sku_id: parseInt(input.dataset.skuId, 10), count: count}); }
    });
    return items;
  }

  function fail(text) {
    message.classList.add("error");
    shop.show(message, text);
  }

  /* The unpaid-orders cap names My orders: make it a link there. */
  function failWithLink(text) {
    fail(text);
    var at = text.indexOf("My orders");
    if (at < 0) { return; }
    var link = document.createElement("a");
    link.href = form.dataset.myOrdersUrl;
    link.id = "order-message-my-orders";
    link.textContent = "My orders";
    message.textContent = "";
    message.append(text.slice(0, at), link, text.slice(at + "My orders".length));
  }

  // An error about the quantities is out of date as soon as they change.
  form.addEventListener("input", function () {
    if (message.classList.contains("error")) {
      message.hidden = true;
      message.classList.remove("error");
    }
  });

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var items = chosenItems();
    message.hidden = true;
    message.classList.remove("error");
    if (!items.length) {
      fail("Choose a quantity for at least one product.");
      return;
    }
    button.disabled = true;
    shop.api("POST", form.dataset.ordersUrl, {items: items}).then(function (result) {
      if (result.status === 201) {
        // My orders confirms the order and offers to pay it at once.
        window.location.href = form.dataset.myOrdersUrl + "?placed=" +
          encodeURIComponent(result.body.order_id);
        return;
      }
      button.disabled = false;
      failWithLink((result.body && result.body.message) ||
        "The order could not be placed. Please try again.");
    }, function () {
      button.disabled = false;
      fail("The shop cannot be reached. Please check your connection.");
    });
  });
})();
