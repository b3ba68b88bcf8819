# python-alipay-sdk reconfigures logging when it is first imported (dictConfig on import).
# Importing it here, before Django applies settings.LOGGING, keeps our configuration in force.
import alipay  # noqa: F401
