"""Gateway error answers, shaped like Alipay's."""

from __future__ import annotations

MESSAGES = {
    "20000": "Service Currently Unavailable",
    "40001": "Missing Required Arguments",
    "40002": "Invalid Arguments",
    "40004": "Business Failed",
    "40006": "Insufficient Permissions",
}


class ApiError(Exception):
    """An error answer. Business failures (40004) are signed; protocol errors are not."""

    def __init__(self, code: str, sub_code: str, sub_msg: str, signed: bool | None = None) -> None:
        super().__init__(f"{code} {sub_code}: {sub_msg}")
        self.code = code
        self.sub_code = sub_code
        self.sub_msg = sub_msg
        self.signed = code == "40004" if signed is None else signed

    @property
    def msg(self) -> str:
        return MESSAGES.get(self.code, "Unknown Error")

    def node(self) -> dict[str, str]:
        return {
            "code": self.code,
            "msg": self.msg,
            "sub_code": self.sub_code,
            "sub_msg": self.sub_msg,
        }


def business(sub_code: str, sub_msg: str) -> ApiError:
    return ApiError("40004", sub_code, sub_msg)


def missing(what: str, sub_msg: str) -> ApiError:
    return ApiError("40001", f"isv.missing-{what}", sub_msg)


def invalid(what: str, sub_msg: str) -> ApiError:
    return ApiError("40002", f"isv.invalid-{what}", sub_msg)


def trade_not_exist() -> ApiError:
    return business("ACQ.TRADE_NOT_EXIST", "交易不存在")


class TradeExpired(ApiError):
    """A pay link or trade past its ``time_expire``: it can no longer be paid."""

    def __init__(self, time_expire: str) -> None:
        super().__init__(
            "40004", "ACQ.TRADE_HAS_CLOSE", f"交易已超时关闭 (time_expire {time_expire})"
        )
        self.time_expire = time_expire


def product_code_error(method: str, given: str, expected: str) -> ApiError:
    """A pay link whose ``product_code`` is missing or not its method's.

    Alipay documents no sub_code of its own for this: a missing or wrong product code is
    answered as an invalid parameter (the cashier shows ``INVALID_PARAMETER``).
    """
    return business(
        "ACQ.INVALID_PARAMETER",
        f"参数有误 product_code {given or '(空)'}：{method} 的 product_code 应为 {expected}",
    )
