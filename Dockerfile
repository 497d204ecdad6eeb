# One image for every orderfleet process (workers, beat, Flower, sandbox carrier, intake API).
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY config ./config
COPY domain ./domain
COPY tasks ./tasks
COPY workers ./workers
COPY sandbox ./sandbox
COPY benchmarks ./benchmarks
COPY migrations ./migrations
# /var/lib/orderfleet: Flower's persistent state (a named volume takes this owner).
RUN pip install . && useradd --create-home orderfleet \
    && mkdir -p /var/lib/orderfleet && chown orderfleet /var/lib/orderfleet
USER orderfleet
CMD ["orderfleet", "--help"]
