# One image for every Python service: web (gunicorn), worker, beat, the sandbox, migrations.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, so that a code change does not reinstall them.
COPY pyproject.toml ./
RUN pip install .

COPY . .

RUN useradd --create-home --uid 10001 --user-group app \
    && mkdir -p var/static var/sandbox keys \
    && chown -R app:app var keys
USER app

# Static files are part of the image; whitenoise serves them from var/static.
RUN python manage.py collectstatic --noinput --verbosity 0

EXPOSE 8000 8090
# The Procfile's web command; docker-compose.yml names each service's command itself.
CMD ["gunicorn", "config.asgi:application", "--bind", "0.0.0.0:8000", \
     "--worker-class", "config.serving.Worker", "--workers", "2", "--access-logfile", "-"]
