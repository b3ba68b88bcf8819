/* My orders: "Pay with Alipay" for unpaid orders; statuses refresh every 3 seconds. */
"use strict";

(function () {
  var table = document.getElementById("orders");
  var message = document.getElementById("orders-message");
  var empty = document.getElementById("no-orders");
  if (!table) { return; }
  var body = table.tBodies[0];
  var REFRESH_MS = 3000;

  function pay(orderId, button) {
    button.disabled = true;
    button.textContent = "Opening Alipay…";
    var url = "/orders/" + encodeURIComponent(orderId) + "/payment/";
    shop.api("GET", url).then(function (result) {
      if (result.status === 200 && result.body && result.body.alipay_url) {
        window.location.href = result.body.alipay_url;
        return;
      }
      button.disabled = false;
      button.textContent = "Pay with Alipay";
      shop.show(message, (result.body && result.body.message) ||
        "The payment could not be started. Please try again.");
    }, function () {
      button.disabled = false;
      button.textContent = "Pay with Alipay";
      shop.show(message, "The shop cannot be reached. Please check your connection.");
    });
  }

  function setActions(row, status) {
    var cell = row.querySelector("td.actions");
    var button = cell.querySelector("button.pay");
    if (status === "UNPAID" && !button) {
      button = document.createElement("button");
      button.type = "button";
      button.className = "pay primary";
      button.id = "pay-" + row.dataset.orderId;
      button.textContent = "Pay with Alipay";
      button.addEventListener("click", function () { pay(row.dataset.orderId, button); });
      cell.appendChild(button);
    } else if (status !== "UNPAID" && button) {
      button.remove();
    }
  }

  function setStatus(row, status) {
    var cell = row.querySelector("td.status");
    if (cell.dataset.status !== status) {
      cell.dataset.status = status;
      cell.textContent = status;
    }
    setActions(row, status);
  }

  function addRow(order) {
    var row = document.createElement("tr");
    row.id = "order-" + order.order_id;
    row.dataset.orderId = order.order_id;
    var created = (order.created_at || "").replace("T", " ").slice(0, 16);
    [["code", order.order_id], ["", created], ["num", "¥ " + order.total_amount],
     ["status", ""], ["actions", ""]].forEach(function (spec) {
      var cell = document.createElement("td");
      if (spec[0]) { cell.className = spec[0]; }
      cell.textContent = spec[1];
      row.appendChild(cell);
    });
    body.insertBefore(row, body.firstChild);
    return row;
  }

  function refresh() {
    shop.api("GET", table.dataset.ordersUrl).then(function (result) {
      if (result.status !== 200 || !Array.isArray(result.body)) { return; }
      result.body.slice().reverse().forEach(function (order) {
        var row = document.getElementById("order-" + order.order_id) || addRow(order);
        setStatus(row, order.status);
      });
      empty.hidden = body.rows.length > 0;
    }, function () { /* offline for a moment: the next refresh tries again */ })
      .finally(function () { window.setTimeout(refresh, REFRESH_MS); });
  }

  Array.prototype.forEach.call(body.rows, function (row) {
    setActions(row, row.querySelector("td.status").dataset.status);
  });
  window.setTimeout(refresh, REFRESH_MS);
})();
