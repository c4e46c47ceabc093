# coinsuper-gateway: `docker build -t coinsuper-gateway .` then
# `docker run -p 8000:8000 -e COINSUPER_ACCESS_KEY=… -e COINSUPER_EMAIL=… coinsuper-gateway`
#
# Two stages: wheels are built in the first, and only they reach the image
# (no source tree, no build/ or egg-info). The dependencies are a layer of
# their own, made from the hashed lock alone (requirements/app.lock, the
# versions every machine installs), so that a change of the source rebuilds
# only the last layer.
FROM python:3.11.11-slim-bookworm AS build
WORKDIR /src
COPY requirements/app.lock ./
RUN pip wheel --no-cache-dir --require-hashes --wheel-dir /wheels/deps -r app.lock
COPY pyproject.toml README.md ./
COPY app ./app
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels/app .

FROM python:3.11.11-slim-bookworm
RUN useradd --create-home --uid 10001 gateway
COPY --from=build /wheels/deps /wheels/deps
RUN pip install --no-cache-dir --no-index /wheels/deps/*.whl && rm -rf /wheels/deps
COPY --from=build /wheels/app /wheels/app
RUN pip install --no-cache-dir --no-index --no-deps /wheels/app/*.whl && rm -rf /wheels/app

USER 10001
WORKDIR /home/gateway
ENV GATEWAY_HOST=0.0.0.0 \
    GATEWAY_PORT=8000 \
    PYTHONUNBUFFERED=1
EXPOSE 8000
# The port the gateway listens on, whatever GATEWAY_PORT says.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('GATEWAY_PORT', '8000'), timeout=2)"]
ENTRYPOINT ["coinsuper-gateway"]
CMD ["serve"]
