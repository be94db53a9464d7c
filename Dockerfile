# Portcullis: the same install step as `make run` (requirements.txt), served by gunicorn with
# gunicorn.conf.py, as an unprivileged user. Migrations and the first admin are a separate step
# (`flask --app wsgi db upgrade && flask --app wsgi setup`), run once before the instances start:
# compose.yaml's `migrate` service.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PORTCULLIS_HOST=0.0.0.0 \
    PORT=8080 \
    PORTCULLIS_INSTANCE_PATH=/app/instance \
    PORTCULLIS_LOG_FORMAT=json

WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

COPY app ./app
COPY migrations ./migrations
COPY static ./static
COPY templates ./templates
COPY wsgi.py gunicorn.conf.py logformat.py ./

RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin portcullis \
    && mkdir -p /app/instance && chown portcullis /app/instance && chmod 0700 /app/instance
USER portcullis

EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
CMD ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
