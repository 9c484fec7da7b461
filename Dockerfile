# The Precheck server itself. It drives the host's Docker engine through its API (mount the
# socket, or set docker.url): inputs and outputs go through the archive API, so the precheck
# containers need no volume shared with this one.
#
#   docker build -t precheck-server .
#   docker run -d --name precheck -p 8000:8000 \
#     -v /var/run/docker.sock:/var/run/docker.sock \
#     -v precheck-data:/var/lib/precheck \
#     -e PRECHECK_API_KEY=... precheck-server
FROM python:3.11-slim

RUN useradd --system --home-dir /var/lib/precheck --create-home precheck
WORKDIR /opt/precheck
COPY pyproject.toml README.md ./
COPY precheck ./precheck
RUN pip install --no-cache-dir . && rm -rf /root/.cache
COPY deploy/config.container.toml /etc/precheck/config.toml

# Root is needed only to reach a root-owned Docker socket; with a socket group, run as
# `--user precheck --group-add <docker gid>` instead.
VOLUME /var/lib/precheck
EXPOSE 8000
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health')"
ENTRYPOINT ["precheck-server"]
CMD ["serve", "--config", "/etc/precheck/config.toml", "--log-format", "json"]
