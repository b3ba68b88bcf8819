"""URL converters: an order id in a path is the seed's format, anything else is a 404."""


class OrderIdConverter:
    # Also keeps NUL bytes and the like from reaching the database (PostgreSQL refuses them).
    regex = r"[A-Za-z0-9_]{1,64}"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value
