"""The Llama 3.2 Vision ("mllama") policy in JAX: config, params, forward, value head, KV cache, sampler,
processor, HF safetensors import/export and sharding rules."""
