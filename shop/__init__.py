"""The shop domain: users, SKUs, orders and the storefront pages."""
