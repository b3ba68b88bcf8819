"""What is stored of an event, and the key that recognises a repeat delivery (no database)."""
import hashlib

from payment.event_store import MAX_PARAMS, MAX_VALUE_LENGTH, dedupe_key, params_storable


def test_storable_keeps_text_as_it_came() -> None:
    assert params_storable({"out_trade_no": "42", "total_amount": "9.90", "isv_ticket": ""}) == {
        "out_trade_no": "42", "total_amount": "9.90", "isv_ticket": ""}


def test_storable_replaces_nul_and_lone_surrogates_and_makes_values_text() -> None:
    assert params_storable({"a": "x\x00y", "b": "\ud800", "c": 12}) == {"a": "x\ufffdy", "b": "?",
                                                                   "c": "12"}


def test_storable_bounds_names_values_and_the_number_of_parameters() -> None:
    params = {f"p{i}": "v" for i in range(MAX_PARAMS + 10)}
    params["p0"] = "x" * (MAX_VALUE_LENGTH + 100)

    stored = params_storable({**params, "n" * 100: "long name"})

    assert len(stored) == MAX_PARAMS
    assert list(stored) == [f"p{i}" for i in range(MAX_PARAMS)]
    assert stored["p0"] == "x" * MAX_VALUE_LENGTH
    assert list(params_storable({"n" * 100: "v"})) == ["n" * 64]


def test_queries_and_bill_lines_are_one_event_per_trade_and_status() -> None:
    params = {"trade_no": "2026112522001", "trade_status": "TRADE_SUCCESS", "x": "ignored"}

    assert dedupe_key("query", params) == "query:2026112522001:TRADE_SUCCESS"
    assert dedupe_key("bill", params) == "bill:2026112522001:TRADE_SUCCESS"
    assert dedupe_key("query", {"trade_no": "1" * 300}) == f"query:{'1' * 300}"[:200]


def test_a_notification_is_recognised_by_its_notify_id() -> None:
    assert dedupe_key("notify", {"notify_id": "ac05099524730693a8b330c5ecf72da9786",
                                 "sign": "a"}) == "notify:ac05099524730693a8b330c5ecf72da9786"
    long_id = "n" * 129
    assert dedupe_key("notify", {"notify_id": long_id}) == (
        f"notify:sha256:{hashlib.sha256(long_id.encode()).hexdigest()}")


def test_other_events_are_recognised_by_all_their_parameters_in_any_order() -> None:
    first = dedupe_key("return", {"out_trade_no": "42", "trade_no": "T1"})

    assert first == dedupe_key("return", {"trade_no": "T1", "out_trade_no": "42"})
    assert first == "return:sha256:" + hashlib.sha256(b"out_trade_no=42&trade_no=T1").hexdigest()
    assert first != dedupe_key("return", {"out_trade_no": "42", "trade_no": "T2"})
    assert dedupe_key("notify", {"out_trade_no": "42"}).startswith("notify:sha256:")
