import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")

application = get_wsgi_application()

from payment.alipay import keys_require  # noqa: E402  (needs the settings loaded above)
from shop.checks import checks_require  # noqa: E402

keys_require()
checks_require()
