"""Operations: health checks, the /metrics, /healthz and /readyz endpoints, `ota doctor`."""
