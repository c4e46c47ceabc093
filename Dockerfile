# coinsuper-gateway: `docker build -t coinsuper-gateway .` then
# `docker run -p 8000:8000 -e COINSUPER_ACCESS_KEY=… -e COINSUPER_EMAIL=… coinsuper-gateway`
FROM python:3.11-slim

RUN useradd --create-home --uid 10001 gateway
WORKDIR /srv/gateway
COPY pyproject.toml README.md ./
COPY app ./app
RUN pip install --no-cache-dir . && rm -rf /root/.cache

USER gateway
ENV GATEWAY_HOST=0.0.0.0 \
    GATEWAY_PORT=8000 \
    PYTHONUNBUFFERED=1
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)" || exit 1
ENTRYPOINT ["coinsuper-gateway"]
CMD ["serve"]
