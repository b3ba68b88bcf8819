"""Django's PostgreSQL backend with a pool that lends no connection the server has ended
(ENGINE `infra.postgresql`, which config/settings.py chooses for the pooled web)."""
