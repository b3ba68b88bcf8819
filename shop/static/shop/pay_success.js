/* Alipay's return page: hand the return parameters to the shop verbatim, show the outcome. */
"use strict";

(function () {
  var outcome = document.getElementById("outcome");
  var POLL_MS = 2000;
  var GIVE_UP_MS = Number(outcome.dataset.giveUpSeconds || 120) * 1000;
  var query = window.location.search;  // kept verbatim: the signature covers these values
  var params = new URLSearchParams(query);

  function setState(state) { outcome.dataset.state = state; }

  var orderId = params.get("out_trade_no") || "";
  if (/^[A-Za-z0-9_]{1,64}$/.test(orderId)) {
    document.getElementById("to-order").href = "/my/orders/" + orderId + "/";
    document.getElementById("rejected-order-link").hidden = false;
  }

  function paid(orderId, tradeNo) {
    document.getElementById("paid-order-id").textContent = orderId || "";
    document.getElementById("trade-no").textContent = tradeNo || "";
    setState("paid");
  }

  function poll(orderId) {
    var started = Date.now();
    var url = "/orders/" + encodeURIComponent(orderId) + "/payment/status/";
    setState("processing");

    function again() {
      if (Date.now() - started >= GIVE_UP_MS) { setState("gave-up"); return; }
      window.setTimeout(check, POLL_MS);
    }

    function check() {
      shop.api("GET", url).then(function (result) {
        if (result.status === 200 && result.body && result.body.trade_id) {
          paid(orderId, result.body.trade_id);
        } else if (result.status === 403 || result.status === 404) {
          setState("gave-up");  // not signed in here: the order page will show it
        } else {
          again();
        }
      }, again);
    }

    window.setTimeout(check, POLL_MS);
  }

  if (!query) {
    setState("nothing");  // opened directly: no payment was attempted from here
    return;
  }
  if (!params.get("sign")) {
    setState("rejected");
    return;
  }
  shop.api("PUT", outcome.dataset.statusUrl + query).then(function (result) {
    var body = result.body || {};
    if (result.status === 200 && body.trade_id) {
      paid(orderId, body.trade_id);
    } else if (result.status === 202) {
      poll(body.order_id || orderId);
    } else if (result.status === 409) {
      setState("refunding");
    } else if (result.status === 400 || result.status === 403) {
      setState("rejected");
    } else if (orderId) {
      poll(orderId);  // the shop is busy: the stored order tells us when it is paid
    } else {
      setState("gave-up");
    }
  }, function () {
    if (orderId) { poll(orderId); } else { setState("gave-up"); }
  });
})();
