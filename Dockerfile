# pgbastion container image: build with the full toolchain, run with only what runs.
#   docker build -t pgbastion .
#   docker run -p 6432:6432 -p 9930:9930 -v /etc/pgbastion:/etc/pgbastion:ro pgbastion
# The config is read from $PGBASTION_CONFIG; secrets come in as ${env:...} or ${file:...}.

FROM node:20-bookworm-slim AS build
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json ./
COPY src ./src
RUN npm run build && npm prune --omit=dev

FROM node:20-bookworm-slim
ENV NODE_ENV=production \
    PGBASTION_CONFIG=/etc/pgbastion/pgbastion.yaml
WORKDIR /opt/pgbastion
COPY --from=build /src/package.json ./
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
COPY config/pgbastion.yaml /etc/pgbastion/pgbastion.yaml
RUN ln -s /opt/pgbastion/dist/cli/main.js /usr/local/bin/pgbastion && chmod 755 dist/cli/main.js
# The image's own unprivileged user (the node base image ships "node", uid 1000).
USER node
EXPOSE 6432 9930
STOPSIGNAL SIGTERM
ENTRYPOINT ["pgbastion"]
CMD ["start"]
