"""The second-order prediction of the KL a tensor's perturbation adds (compress/sensitivity.py) against the KL
measured on the same tokens, one tensor at a time."""

import torch

from slmkit.compress.sensitivity import measure_sensitivity

from conftest import tiny_model


def kl(base: torch.Tensor, logits: torch.Tensor) -> float:
    log_q = torch.log_softmax(logits.float(), -1)
    return float((base.exp() * (base - log_q)).sum(-1).mean())


def test_predicted_kl_matches_the_measured_kl_of_a_small_perturbation():
    model = tiny_model("llama").eval()
    ids = torch.randint(0, model.config.vocab_size, (8, 64), generator=torch.Generator().manual_seed(0))
    sensitivity = measure_sensitivity(model, ids, batch_size=3)
    parameters = dict(model.named_parameters())
    matrices = [name for name, parameter in parameters.items() if parameter.dim() == 2]
    assert set(sensitivity) == set(matrices)  # every linear and embedding, each matrix once
    with torch.no_grad():
        base = torch.log_softmax(model(input_ids=ids).logits.float(), -1)
    generator = torch.Generator().manual_seed(1)
    measured_kl, predicted_kl = {}, {}
    for name in matrices:
        parameter = parameters[name]
        noise = torch.randn(parameter.shape, generator=generator) * float(parameter.detach().std()) * 0.1
        with torch.no_grad():
            parameter.add_(noise)
            measured = kl(base, model(input_ids=ids).logits)
            parameter.sub_(noise)
        measured_kl[name], predicted_kl[name] = measured, sensitivity[name].predicted_kl(noise)
    # Tensors that matter (a tiny random model's queries and keys barely move its near-uniform attention).
    ratios = {name: predicted_kl[name] / measured for name, measured in measured_kl.items()
              if measured > max(measured_kl.values()) / 1000}
    assert len(ratios) >= len(matrices) // 2
    assert all(0.5 < ratio < 2 for ratio in ratios.values()), ratios
    assert parameters["model.embed_tokens.weight"].requires_grad  # trainability restored
