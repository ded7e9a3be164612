# The taskhost image: the static taskhost and nothing else. Worker pods of pools whose
# tasks name no image run it; for the others, its init container runs
# `/taskhost install /batchplane/bin/taskhost` to put it into the task's own image.
#   scripts/taskhost-static.sh dist/taskhost
#   docker buildx build --platform linux/amd64,linux/arm64 -f infra/taskhost.Dockerfile \
#     -t ACCOUNT.dkr.ecr.REGION.amazonaws.com/batchplane/taskhost:VERSION --push dist/taskhost
FROM scratch
ARG TARGETARCH
COPY taskhost-${TARGETARCH} /taskhost
ENTRYPOINT ["/taskhost"]
