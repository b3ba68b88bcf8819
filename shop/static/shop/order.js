/* One order's page: a live countdown to its pay-by time, "Pay now" and "Cancel order" while
   unpaid; its payment and refunds, and why it was canceled, from its payment status. */
"use strict";

(function () {
  var card = document.getElementById("order");
  if (!card) { return; }
  var WORDS = JSON.parse(document.getElementById("status-words").textContent);
  var TIME_ZONE = document.getElementById("time-zone").dataset.timeZone;
  var REFRESH_MS = 5000;
  var orderId = card.dataset.orderId;
  var statusLabel = document.getElementById("order-status");
  var unpaid = document.getElementById("unpaid");
  var message = document.getElementById("order-message");
  var payNow = document.getElementById("pay-now");
  var cancelButton = document.getElementById("cancel-order");
  var confirmBox = document.getElementById("cancel-confirm");
  var countdown = document.getElementById("countdown");
  var deadline = new Date(document.getElementById("pay-by-time").dataset.deadline).getTime();
  var latest = null;

  function words(key) { return WORDS[key] || key; }

  function setStatus(status, payment) {
    var detail = shop.detailStatus(status, payment);
    card.dataset.status = status;
    statusLabel.dataset.status = status;
    statusLabel.textContent = words(detail);
    unpaid.hidden = status !== "UNPAID";
  }

  function tick() {
    if (card.dataset.status !== "UNPAID") { return; }
    var left = Math.max(0, Math.floor((deadline - Date.now()) / 1000));
    if (left === 0) {
      countdown.textContent = "Time to pay is up: the order is being closed.";
      payNow.disabled = true;
    } else {
      var minutes = Math.floor(left / 60);
      var seconds = left % 60;
      countdown.textContent = (minutes ? minutes + " min " : "") + seconds + " s left.";
    }
    window.setTimeout(tick, 1000);
  }

  function showPayment(payment) {
    var section = document.getElementById("payment");
    if (payment.trade_id) {
      document.getElementById("paid-at").textContent =
        payment.paid_at ? shop.localTime(payment.paid_at, TIME_ZONE) : "";
      document.getElementById("paid-amount").textContent =
        payment.paid_amount ? "¥ " + payment.paid_amount : "";
      document.getElementById("trade-no").textContent = payment.trade_id;
      section.hidden = false;
    }
    var refunds = payment.refunds || [];
    var list = document.getElementById("refund-list").tBodies[0];
    list.textContent = "";
    refunds.forEach(function (refund, index) {
      var row = list.insertRow();
      row.id = "refund-" + index;
      row.className = "refund";
      [["when", "Asked", shop.localTime(refund.requested_at, TIME_ZONE)],
       ["num amount", "Amount", "¥ " + refund.amount],
       ["refund-state", "State", REFUND_WORDS[refund.state] || refund.state],
       ["reason", "Reason", refund.reason]].forEach(function (cell) {
        var td = row.insertCell();
        td.className = cell[0];
        td.dataset.label = cell[1];
        td.textContent = cell[2];
      });
      row.dataset.state = refund.state;
    });
    document.getElementById("refunds").hidden = refunds.length === 0;
    var closed = document.getElementById("closed-reason");
    if (payment.status === "CANCELED" && payment.canceled_by) {
      closed.textContent = payment.canceled_by === "expiry"
        ? "This order expired unpaid: it was not paid by its pay-by time, so it was canceled " +
          "and nothing was charged."
        : "You canceled this order before paying it; nothing was charged.";
      closed.hidden = false;
    } else {
      closed.hidden = true;
    }
  }

  var REFUND_WORDS = {processing: "Being refunded", succeeded: "Refunded",
                      failed: "Not refunded (the shop will be in touch)"};

  function refresh() {
    return shop.api("GET", card.dataset.statusUrl).then(function (result) {
      if (result.status !== 200 || !result.body) { return; }
      latest = result.body;
      setStatus(latest.status, latest);
      showPayment(latest);
    }, function () { /* offline for a moment: the next refresh tries again */ });
  }

  function refreshLoop() {
    refresh().finally(function () {
      var open = latest === null || latest.status === "UNPAID" ||
        (latest.refunds || []).some(function (r) { return r.state === "processing"; });
      if (open) { window.setTimeout(refreshLoop, REFRESH_MS); }
    });
  }

  payNow.addEventListener("click", function () {
    message.hidden = true;
    shop.pay(orderId, payNow, message);
  });
  cancelButton.addEventListener("click", function () {
    message.hidden = true;
    confirmBox.hidden = false;
  });
  document.getElementById("cancel-no").addEventListener("click", function () {
    confirmBox.hidden = true;
  });
  document.getElementById("cancel-yes").addEventListener("click", function () {
    var yes = this;
    yes.disabled = true;
    shop.api("POST", card.dataset.cancelUrl).then(function (result) {
      yes.disabled = false;
      confirmBox.hidden = true;
      if (result.status !== 200) {
        shop.show(message, (result.body && result.body.message) ||
          "The order could not be canceled. Please try again.");
      }
      refresh();
    }, function () {
      yes.disabled = false;
      shop.show(message, "The shop cannot be reached. Please check your connection.");
    });
  });

  tick();
  refreshLoop();
})();
