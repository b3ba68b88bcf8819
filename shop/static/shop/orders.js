/* My orders: confirm a new order, "Pay with Alipay" for unpaid orders; statuses refresh
   every 3 seconds and are shown in the buyer's words (expired, canceled by the buyer, partly
   refunded from each order's payment status). */
"use strict";

(function () {
  var table = document.getElementById("orders");
  var message = document.getElementById("orders-message");
  var empty = document.getElementById("no-orders");
  var placed = document.getElementById("order-placed");
  if (!table) { return; }
  var body = table.tBodies[0];
  var REFRESH_MS = 3000;
  var WORDS = JSON.parse(document.getElementById("status-words").textContent);

  function words(status) { return WORDS[status] || status; }

  function localTime(iso) { return shop.localTime(iso, table.dataset.timeZone); }

  function pay(orderId, button, notice) { shop.pay(orderId, button, notice); }

  /* Why a canceled order was canceled, and whether a paid one is partly refunded, come
     from its payment status: asked once per order and status, one order at a time. */
  var detailAsked = {};
  var detailQueue = [];
  var detailBusy = false;

  function needsDetail(status) {
    return status === "CANCELED" || shop.PAID.indexOf(status) >= 0;
  }

  function askDetail(row, status) {
    var key = row.dataset.orderId + ":" + status;
    if (!needsDetail(status) || detailAsked[key]) { return; }
    detailAsked[key] = true;
    detailQueue.push(row);
    nextDetail();
  }

  function nextDetail() {
    if (detailBusy || !detailQueue.length) { return; }
    detailBusy = true;
    var row = detailQueue.shift();
    var url = "/orders/" + encodeURIComponent(row.dataset.orderId) + "/payment/status/";
    shop.api("GET", url).then(function (result) {
      if (result.status === 200 && result.body) {
        var label = row.querySelector(".status");
        var detail = shop.detailStatus(label.dataset.status, result.body);
        if (detail !== label.dataset.status) {
          label.dataset.detail = detail;
          label.textContent = words(detail);
        }
      }
    }, function () { /* the plain status words stay */ }).finally(function () {
      detailBusy = false;
      nextDetail();
    });
  }

  function setActions(row, status) {
    var cell = row.querySelector(".actions");
    var button = cell.querySelector("button.pay");
    if (status === "UNPAID" && !button) {
      button = document.createElement("button");
      button.type = "button";
      button.className = "pay primary";
      button.id = "pay-" + row.dataset.orderId;
      button.textContent = "Pay with Alipay";
      button.addEventListener("click", function () {
        pay(row.dataset.orderId, button, message);
      });
      cell.appendChild(button);
    } else if (status !== "UNPAID" && button) {
      button.remove();
    }
  }

  function setPlaced(status) {
    if (placed.dataset.status === status) { return; }
    placed.dataset.status = status;
    document.getElementById("placed-status").textContent = words(status);
    document.getElementById("placed-pay").hidden = status !== "UNPAID";
  }

  function setStatus(row, status) {
    var label = row.querySelector(".status");
    if (label.dataset.status !== status) {
      label.dataset.status = status;
      delete label.dataset.detail;
      label.textContent = words(status);
    }
    askDetail(row, status);
    setActions(row, status);
    if (placed && placed.dataset.orderId === row.dataset.orderId) { setPlaced(status); }
  }

  function showItems(list, goods) {
    goods.forEach(function (line) {
      var item = document.createElement("li");
      item.textContent = line.name + " × " + line.count;
      list.appendChild(item);
    });
  }

  function cell(row, className, label, text) {
    var td = document.createElement("td");
    if (className) { td.className = className; }
    if (label) { td.dataset.label = label; }
    td.textContent = text;
    row.appendChild(td);
    return td;
  }

  /* An order placed elsewhere (another tab, the API): its items come from its detail. */
  function addRow(order) {
    var row = document.createElement("tr");
    row.id = "order-" + order.order_id;
    row.dataset.orderId = order.order_id;
    var lead = cell(row, "lead", "", "");
    var number = document.createElement("a");
    number.className = "code order-id";
    number.href = "/my/orders/" + encodeURIComponent(order.order_id) + "/";
    number.textContent = order.order_id;
    var items = document.createElement("ul");
    items.className = "items";
    lead.appendChild(number);
    lead.appendChild(items);
    cell(row, "when", "Placed", localTime(order.created_at));
    cell(row, "num", "Total", "¥ " + order.total_amount);
    var state = cell(row, "state", "Status", "");
    ["status", "actions"].forEach(function (className) {
      var part = document.createElement("span");
      part.className = className;
      state.appendChild(part);
    });
    body.insertBefore(row, body.firstChild);
    shop.api("GET", "/orders/" + encodeURIComponent(order.order_id) + "/").then(function (result) {
      if (result.status === 200 && result.body && Array.isArray(result.body.goods)) {
        showItems(items, result.body.goods);
      }
    }, function () { /* the number and total still say which order it is */ });
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
    var status = row.querySelector(".status").dataset.status;
    setActions(row, status);
    askDetail(row, status);
  });
  if (placed) {
    var payNow = document.getElementById("pay-now");
    payNow.addEventListener("click", function () {
      pay(placed.dataset.orderId, payNow, document.getElementById("placed-message"));
    });
  }
  window.setTimeout(refresh, REFRESH_MS);
})();
