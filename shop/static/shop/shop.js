/* Shared helpers: JSON calls to the shop API with the session and its CSRF token; paying an
   order (with WeChat's guidance); an order's status in the buyer's words. */
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

  /* WeChat's own browser blocks Alipay's pages: a pay link opened there cannot work. */
  function inWeChat() { return /MicroMessenger/i.test(navigator.userAgent); }

  /* Pay an order: open its Alipay pay link; inside WeChat, show the guidance instead. */
  function pay(orderId, button, notice, guide) {
    if (inWeChat()) {
      guide = guide || document.getElementById("wechat-guide");
      if (guide) {
        guide.hidden = false;
        guide.scrollIntoView({block: "nearest"});
      }
      return;
    }
    var label = button.textContent;
    button.disabled = true;
    button.textContent = "Opening Alipay…";
    var url = "/orders/" + encodeURIComponent(orderId) + "/payment/";
    api("GET", url).then(function (result) {
      if (result.status === 200 && result.body && result.body.alipay_url) {
        window.location.href = result.body.alipay_url;
        return;
      }
      button.disabled = false;
      button.textContent = label;
      show(notice, (result.body && result.body.message) ||
        "The payment could not be started. Please try again.");
    }, function () {
      button.disabled = false;
      button.textContent = label;
      show(notice, "The shop cannot be reached. Please check your connection.");
    });
  }

  var PAID = ["UNSEND", "UNRECEIVED", "UNCOMMENT", "FINISHED"];

  /* The finer status key a payment status gives: why a canceled order was canceled, and
     whether a paid one is partly refunded (some refunds succeeded, not all of it). */
  function detailStatus(status, payment) {
    if (!payment) { return status; }
    if (status === "CANCELED" && payment.canceled_by === "expiry") { return "EXPIRED"; }
    if (status === "CANCELED" && payment.canceled_by === "buyer") { return "CANCELED_BY_BUYER"; }
    if (PAID.indexOf(status) >= 0 && refundedCents(payment) > 0) { return "PARTLY_REFUNDED"; }
    return status;
  }

  function cents(amount) { return Math.round(Number(amount) * 100); }

  function refundedCents(payment) {
    return (payment.refunds || []).reduce(function (sum, refund) {
      return refund.state === "succeeded" ? sum + cents(refund.amount) : sum;
    }, 0);
  }

  /* "YYYY-MM-DD HH:MM" in the shop's time zone, as the pages themselves show times. */
  function localTime(iso, timeZone) {
    var date = new Date(iso);
    if (isNaN(date.getTime())) { return ""; }
    var parts = {};
    new Intl.DateTimeFormat("en-GB", {
      timeZone: timeZone || undefined, hourCycle: "h23", year: "numeric",
      month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit",
    }).formatToParts(date).forEach(function (part) { parts[part.type] = part.value; });
    return parts.year + "-" + parts.month + "-" + parts.day + " " + parts.hour + ":" +
      parts.minute;
  }

  return {api: api, show: show, inWeChat: inWeChat, pay: pay, detailStatus: detailStatus,
          cents: cents, refundedCents: refundedCents, localTime: localTime, PAID: PAID};
})();
