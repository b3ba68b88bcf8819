"""gunicorn settings read from the working directory by every `gunicorn` command here.

The access log shows the path without the query string: Alipay's return parameters (with
their signature) arrive in it, and logs never carry signatures or whole payloads.
"""

access_log_format = '%(h)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(L)ss'
