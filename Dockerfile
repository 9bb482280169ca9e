# The rswap image: the CLI and every service, with the system tools they drive. Two stages: the
# build (TypeScript, dev dependencies, the tests it compiles) ships nothing but dist/.
FROM node:20-bookworm-slim AS build
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund --loglevel=error
COPY tsconfig.json ./
COPY shared shared
COPY services services
COPY cli cli
COPY bench bench
COPY test test
RUN npm run build && rm -rf dist/test && npm prune --omit=dev

FROM node:20-bookworm-slim
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      tgt libiscsi-bin qemu-system-common qemu-utils qemu-block-extra fuse3 open-iscsi iproute2 util-linux kmod procps \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/rswap
COPY --from=build /src/package.json ./
COPY --from=build /src/node_modules node_modules
COPY --from=build /src/dist dist
# Unprivileged unless told otherwise: the broker runs so; compose starts the host agents, which
# drive swap, mounts and iSCSI, with user: root (`rswap check` insists on both).
USER node
ENTRYPOINT ["node", "/opt/rswap/dist/cli/rswap.js"]
