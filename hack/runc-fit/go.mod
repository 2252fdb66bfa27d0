module edgetune.dev/hack/runc-fit

go 1.25
