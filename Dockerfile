# callstream server: slim Python, non-root, `callstream serve` on 0.0.0.0:8080.
# The server refuses a public bind without TWILIO_AUTH_TOKEN (signatures are then
# checked on every webhook and the media socket upgrade): pass it with -e.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY agent ./agent
COPY media ./media
COPY twiml ./twiml
COPY fixtures ./fixtures
RUN pip install . \
    && useradd --create-home --uid 10001 callstream \
    && mkdir -p /app/archive && chown callstream /app/archive

USER callstream
VOLUME ["/app/archive"]
EXPOSE 8080
ENV CALLSTREAM_FLOW=/app/fixtures/flows/acme.yaml CALLSTREAM_ARCHIVE=/app/archive
# SIGTERM drains (README "Shutting down"); `docker stop` waits 10 s by default,
# so calls get 8 s: raise both together (docker stop -t, Kubernetes grace period)
ENV CALLSTREAM_DRAIN_S=8
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status == 200 else 1)"
CMD ["callstream", "serve", "--host", "0.0.0.0", "--port", "8080", "--json-logs"]
