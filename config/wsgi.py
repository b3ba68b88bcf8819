import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

application = get_wsgi_application()

from infra.checks import checks_require  # noqa: E402
from payment.gateway import keys_require  # noqa: E402  (needs the settings loaded above)

keys_require()
checks_require()
