/* Product list: "Place order" posts the chosen quantities to /orders/. */
"use strict";

(function () {
  var form = document.getElementById("order-form");
  var button = document.getElementById("place-order");
  var message = document.getElementById("order-message");
  if (!form || !button) { return; }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var items = [];
    form.querySelectorAll("input.qty").forEach(function (input) {
      var count = parseInt(input.value, 10);
      if (count > 0) { items.push({sku_id: parseInt(input.dataset.skuId, 10), count: count}); }
    });
    message.classList.remove("error");
    if (!items.length) {
      message.classList.add("error");
      shop.show(message, "Choose a quantity for at least one product.");
      return;
    }
    button.disabled = true;
    shop.api("POST", form.dataset.ordersUrl, {items: items}).then(function (result) {
      if (result.status === 201) {
        window.location.href = form.dataset.myOrdersUrl + "#order-" + result.body.order_id;
        return;
      }
      button.disabled = false;
      message.classList.add("error");
      shop.show(message, (result.body && result.body.message) ||
        "The order could not be placed. Please try again.");
    }, function () {
      button.disabled = false;
      message.classList.add("error");
      shop.show(message, "The shop cannot be reached. Please check your connection.");
    });
  });
})();
