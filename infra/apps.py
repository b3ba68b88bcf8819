from django.apps import AppConfig


class InfraConfig(AppConfig):
    name = "infra"
    verbose_name = "Infrastructure"

    def ready(self) -> None:
        from infra import checks  # noqa: F401  (registers the production settings check)
        from infra.envvars import old_names_log

        # Logging is configured by now: the warning is a log line like any other.
        old_names_log()
