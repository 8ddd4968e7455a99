"""Online serving on Ray Serve: an OpenAI-compatible embeddings API and LanceDB search over autoscaled encoder and
decoder deployments. `causal2vec.serve.app:build_app` is what serve_configs/*.yaml import."""
