# The rswap image: the CLI and every service, with the system tools they drive.
FROM node:20-bookworm-slim
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      tgt libiscsi-bin qemu-system-common qemu-utils qemu-block-extra fuse3 open-iscsi iproute2 util-linux kmod procps \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/rswap
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error
COPY tsconfig.json ./
COPY shared shared
COPY services services
COPY cli cli
COPY bench bench
COPY test test
RUN npm run build && npm prune --omit=dev
ENTRYPOINT ["node", "/opt/rswap/dist/cli/rswap.js"]
