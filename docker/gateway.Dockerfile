# The LLM gateway (gateway/) as an image for docker-compose.yml: the
# project's pinned packages (no torch) on the official Python 3.11.7 image.
# Built by: docker-compose build gateway
FROM python:3.11.7-slim-bookworm
WORKDIR /app
COPY requirements.txt requirements-nodeps.txt ./
RUN pip install --no-cache-dir -r requirements.txt \
 && pip install --no-cache-dir --no-deps -r requirements-nodeps.txt
COPY gateway/ gateway/
COPY udfs/ udfs/
COPY conf/gateway.toml conf/gateway.toml
ENTRYPOINT ["python", "-m", "gateway", "--config", "conf/gateway.toml"]
