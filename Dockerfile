# Node 24 LTS: the runtime Rotor ships on (Node 20 reached end of life on 2026-04-30).
# Build stage: compile TypeScript with the dev dependencies.
FROM node:24-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
COPY plugins ./plugins
COPY schemas ./schemas
COPY scripts ./scripts
RUN npm run build && npm prune --omit=dev

# Run stage: compiled JavaScript and production dependencies only, as a non-root user.
# The keys CLI is in the image too: `node dist/scripts/keys.js generate /run/rotor/keys.json`.
FROM node:24-bookworm-slim
ENV NODE_ENV=production HOST=0.0.0.0 PORT=8080 MANAGEMENT_PORT=9100
WORKDIR /app
COPY --from=build --chown=node:node /app/node_modules ./node_modules
COPY --from=build --chown=node:node /app/dist ./dist
COPY --chown=node:node package.json ./
# Where the keys live; owned by node, so a volume mounted here starts out writable by the CLI.
RUN mkdir -p /run/rotor && chown node:node /run/rotor
USER node
# 8080: the service; 9100: /metrics and /health/* (MANAGEMENT_PORT), for the scraper and probes.
EXPOSE 8080 9100
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD node -e "fetch('http://127.0.0.1:'+(process.env.MANAGEMENT_PORT||process.env.PORT||8080)+'/health/ready').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"
CMD ["node", "dist/src/server.js"]
