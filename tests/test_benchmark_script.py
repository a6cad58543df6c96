"""Tests of `scripts/benchmark.py`: a tiny end-to-end run, its JSON and markdown, and the measuring instruments."""

import importlib.util
import json
import os
import statistics
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tiny_models import DEVICES
from torch.profiler import record_function
from transformers import CLIPVisionConfig, CLIPVisionModel


SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py"
SIZES = ("64x96", "80x72")
BATCH_SIZE = 2
MIB = 2**20


def load_script():
    spec = importlib.util.spec_from_file_location("benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


benchmark = load_script()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One tiny benchmark run: its JSON report and its markdown."""
    folder = tmp_path_factory.mktemp("benchmark")
    argv = f"--models tiny --sizes {' '.join(SIZES)} --batch-size {BATCH_SIZE} --repeats 1 --warmup 0".split()
    argv += ["--profile-runs", "1", "--output", str(folder / "r.json"), "--markdown", str(folder / "r.md")]
    benchmark.main(argv)
    return json.loads((folder / "r.json").read_text()), (folder / "r.md").read_text()


@pytest.fixture(scope="module")
def tiny_model():
    return benchmark.random_scclip_model(benchmark.MODEL_SHAPES["tiny"], benchmark.character_tokenizer(), seed=0)


def test_every_case_is_timed_and_summarised(run):
    report, _ = run
    assert [result["model"] for result in report["results"]] == ["tiny"]
    sizes = report["results"][0]["sizes"]
    assert list(sizes) == list(SIZES)
    for name, entry in sizes.items():
        assert f"{entry['height']}x{entry['width']}" == name
        assert set(entry["cases"]) == set(benchmark.CASES)
        for case in entry["cases"].values():
            assert len(case["times_ms"]) == 1 and min(case["times_ms"]) > 0
            assert case["ms_per_image"] == pytest.approx(statistics.median(case["times_ms"]) / BATCH_SIZE)
            assert case["images_per_second"] == pytest.approx(1000 / case["ms_per_image"])
            assert case["memory"]["increase_mib"] > 0
            assert case["memory"]["peak_mib"] > case["memory"]["increase_mib"]
            assert case["memory"]["tensor_peak_mib"] > 0
            assert case["host_synchronizations"] is None  # a CUDA measure
            assert case["page_faults"]["minor"] >= 0 and case["page_faults"]["system_seconds"] >= 0


def test_ratios_come_from_the_measured_cases(run):
    report, _ = run
    for entry in report["results"][0]["sizes"].values():
        cases, ratios = entry["cases"], entry["ratios"]
        plain, batched, one_window = (cases[name] for name in benchmark.CASES)
        # One repeat: the median of the repeats' own ratios is the ratio of the times.
        assert ratios["time_batched_over_plain"] == pytest.approx(batched["ms_per_image"] / plain["ms_per_image"])
        assert ratios["time_one_window_over_batched"] == pytest.approx(
            one_window["ms_per_image"] / batched["ms_per_image"]
        )
        assert ratios["memory_batched_over_plain"] == pytest.approx(
            batched["memory"]["tensor_peak_mib"] / plain["memory"]["tensor_peak_mib"]
        )
        assert ratios["resident_memory_batched_over_plain"] == pytest.approx(
            batched["memory"]["increase_mib"] / plain["memory"]["increase_mib"]
        )
        for name, bound in benchmark.TARGETS.items():
            measured = entry["stages"][name] if name in entry["stages"] else ratios[name]
            assert entry["targets_met"][name] == (measured <= bound)


def test_stage_breakdown_has_every_model_stage(run):
    report, _ = run
    for entry in report["results"][0]["sizes"].values():
        stages = entry["stages"]
        expected = {"encoder", "lof", "resolution", "similarity_aggregation", "final_attention", "fusion"}
        assert expected | {"upsample_canvas"} == set(stages["stages"])
        for timing in stages["stages"].values():
            assert timing["ms"] > 0
            assert timing["percent"] == pytest.approx(100 * timing["ms"] / stages["profiled_ms"])
        overhead = sum(stages["stages"][name]["ms"] for name in ("lof", "resolution", "similarity_aggregation"))
        assert stages["overhead_stages_percent"] == pytest.approx(100 * overhead / stages["profiled_ms"])
        labelled = sum(timing["ms"] for timing in stages["stages"].values())
        assert stages["unlabelled_ms"] == pytest.approx(stages["profiled_ms"] - labelled)


def test_text_tower_runs_only_for_the_first_segmentation(run):
    report, _ = run
    first, *repeats = report["results"][0]["text_tower_runs"]
    assert first >= 1 and repeats == [0, 0]


def test_text_tower_check_runs_without_autograd_like_the_timed_runs(tiny_model):
    """A forward that records a graph would leave a heap that spares the timed runs their page faults."""
    processor = benchmark.SCCLIPProcessor(
        image_processor=benchmark.SCCLIPImageProcessor(), tokenizer=benchmark.character_tokenizer()
    )
    grad_modes = []
    handle = tiny_model.embeddings.register_forward_hook(lambda *_: grad_modes.append(torch.is_grad_enabled()))
    try:
        runs = benchmark.count_text_tower_runs(tiny_model, processor, ["a", "b"], torch.randn(1, 3, 64, 64), rounds=2)
    finally:
        handle.remove()
    assert runs[0] >= 1 and runs[1] == 0
    assert grad_modes == [False, False]


def test_markdown_tables_show_the_json_numbers(run):
    report, markdown = run
    assert report["environment"]["command"] in markdown
    rows = [line.split(" | ") for line in markdown.splitlines() if line.startswith("| tiny | ")]
    for size, entry in report["results"][0]["sizes"].items():
        summary = next(row for row in rows if row[1] == size and len(row) == 12)
        cases, ratios = entry["cases"], entry["ratios"]
        assert summary[2:5] == [f"{cases[name]['ms_per_image']:.1f}" for name in benchmark.CASES]
        # One repeat: no range to show.
        assert summary[6] == f"{ratios['time_batched_over_plain']:.3f}"
        assert summary[7] == f"{ratios['time_one_window_over_batched']:.3f}"
        assert summary[8:10] == [f"{cases[name]['memory']['tensor_peak_mib']:.1f}" for name in benchmark.CASES[:2]]
        assert summary[10] == f"{ratios['memory_batched_over_plain']:.3f}"
        assert summary[11] == f"{ratios['resident_memory_batched_over_plain']:.3f} |"
        stage_rows = {row[2]: row for row in rows if row[1] == size and len(row) == 5}
        assert f"{entry['stages']['stages']['lof']['percent']:.1f} |" == stage_rows["lof"][4]
    assert "text-tower runs per segmentation with the same labels: " in markdown
    for size, entry in report["results"][0]["sizes"].items():
        faults = {name: entry["cases"][name]["page_faults"] for name in benchmark.CASES}
        counts = ", ".join(
            f"{name} {faults[name]['minor']} ({faults[name]['system_seconds']:.2f} s)" for name in faults
        )
        assert f"- tiny {size}: {counts}" in markdown.split("## Minor page faults per segmentation")[1]


def test_page_faults_count_fresh_memory_and_the_allocator_settings_are_recorded(monkeypatch):
    cpu = torch.device("cpu")
    # 64 MiB is above glibc's largest mmap threshold: a fresh mapping, faulted in page by page as it is written
    # (huge pages, where the kernel uses them for it, still fault once per 2 MiB).
    fresh = benchmark.count_page_faults(lambda: torch.ones(16 * 2**20), cpu)
    reused = torch.zeros(16 * 2**20)
    in_place = benchmark.count_page_faults(lambda: reused.fill_(1.0), cpu)
    assert fresh["minor"] >= 16 and in_place["minor"] < fresh["minor"] / 2
    assert benchmark.count_page_faults(lambda: None, torch.device("cuda")) is None
    for name in [name for name in os.environ if name.startswith("MALLOC_") or name == "LD_PRELOAD"]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("MALLOC_MMAP_MAX_", "0")
    monkeypatch.setenv("LD_PRELOAD", "libjemalloc.so.2")
    monkeypatch.setenv("MALLOCATOR", "not an allocator setting")
    args = benchmark.parse_args([])
    env = benchmark.environment(args, cpu, benchmark.ResidentSetPeak(), [])
    assert env["allocator_environment"] == {"MALLOC_MMAP_MAX_": "0", "LD_PRELOAD": "libjemalloc.so.2"}
    assert benchmark.allocator_settings(env) == " C allocator: MALLOC_MMAP_MAX_=0 LD_PRELOAD=libjemalloc.so.2."


def test_plain_clip_case_is_unmodified_clip(tiny_model):
    """(a) on one window equals an independent CLIPVisionModel with the same weights, post-LN'd and projected."""
    config = tiny_model.config
    clip = CLIPVisionModel(
        CLIPVisionConfig(**{name: getattr(config, name) for name in CLIPVisionConfig.__annotations__})
    )
    clip_names = set(clip.state_dict())
    clip.load_state_dict({name: tensor for name, tensor in tiny_model.state_dict().items() if name in clip_names})
    crop = config.slide_crop_size
    pixel_values, text_embeds = torch.randn(1, 3, crop, crop), torch.randn(5, config.projection_dim)
    with torch.inference_mode():
        logits = benchmark.benchmark_cases(tiny_model, pixel_values, text_embeds)["plain_clip"]()
        tokens = clip(pixel_values).last_hidden_state[:, 1:]
        features = F.normalize(tiny_model.visual_projection(clip.post_layernorm(tokens)), dim=-1)
    grid = crop // config.patch_size
    similarities = (features @ F.normalize(text_embeds, dim=-1).T).transpose(1, 2).reshape(1, -1, grid, grid)
    expected = F.interpolate(similarities, size=(crop, crop), mode="bilinear", align_corners=False)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


def test_one_window_case_only_changes_the_schedule(tiny_model):
    pixel_values, text_embeds = torch.randn(1, 3, 96, 128), torch.randn(4, tiny_model.config.projection_dim)
    cases = benchmark.benchmark_cases(tiny_model, pixel_values, text_embeds)
    window_batch_size = tiny_model.config.window_batch_size
    with torch.inference_mode():
        batched, one_window = cases["scclip_batched"](), cases["scclip_one_window"]()
    torch.testing.assert_close(one_window, batched, atol=1e-5, rtol=1e-5)
    assert tiny_model.config.window_batch_size == window_batch_size > 1


def test_replaced_dense_features_serve_both_cases_only_within_the_block(tiny_model):
    """The --compile path: replacements (compiled functions there) run for (a), (b) and (c), then the methods return."""
    calls = []

    def recording(method):
        return lambda pixel_values: calls.append(method.__name__) or method(pixel_values)

    methods = (tiny_model.get_dense_image_features, tiny_model.get_plain_clip_dense_features)
    replacements = {method.__name__: recording(method) for method in methods}
    cases = benchmark.benchmark_cases(tiny_model, torch.randn(1, 3, 64, 64), torch.randn(3, 32))
    with torch.inference_mode(), benchmark.dense_features_replaced(tiny_model, replacements):
        for run in cases.values():
            run()
    assert calls == ["get_plain_clip_dense_features", "get_dense_image_features", "get_dense_image_features"]
    assert all(name not in vars(tiny_model) for name in replacements)
    assert tiny_model.get_dense_image_features == methods[0]


def test_tensor_peak_counts_what_is_held_at_once():
    def allocate():
        first = torch.ones(4 * MIB // 4)  # 4 MiB
        second = torch.ones(8 * MIB // 4)  # 8 MiB: 12 held
        del first
        third = torch.ones(4 * MIB // 4) * 2  # 4 MiB, then 4 more for the product: 16 held
        return second, third

    def allocate_under_a_label():
        # As the model's stage labels do: frees outside any op happen inside a record_function range.
        with record_function("stage"):
            return allocate()

    assert benchmark.tensor_peak_bytes(allocate) / MIB == pytest.approx(16, abs=0.01)
    assert benchmark.tensor_peak_bytes(allocate_under_a_label) / MIB == pytest.approx(16, abs=0.01)


def test_cpu_peak_memory_counts_a_known_allocation_every_time():
    """64 MiB touched in the call are counted, also the second time, when freed heap memory could be reused."""
    rss, cpu = benchmark.ResidentSetPeak(), torch.device("cpu")
    for _ in range(2):
        memory = benchmark.measure_peak_memory(lambda: torch.ones(64 * MIB // 4), cpu, rss)
        assert memory["increase_mib"] == pytest.approx(64, abs=4)


@pytest.mark.parametrize("device", DEVICES)
def test_host_synchronizations_are_counted_on_cuda(device):
    device = torch.device(device)
    values = torch.randn(64, device=device)

    def launches_only():
        return (values * 2).sum()

    def two_reads():
        return values.sum().item() + values.max().item()

    # Turning the debug mode on also warns, once, that it is a prototype: that warning is no wait and is not counted.
    launches_only, two_reads = (
        benchmark.count_host_synchronizations(run, device) for run in (launches_only, two_reads)
    )
    if device.type == "cpu":
        assert launches_only is None and two_reads is None
    else:
        assert (launches_only, two_reads) == (0, 2)


def test_cpu_is_named_by_its_model(tmp_path, run):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu\n")
    assert benchmark.cpu_name(cpuinfo) == "AMD EPYC 7B13"
    assert benchmark.cpu_name(tmp_path / "absent") == (benchmark.platform.processor() or "cpu")
    assert run[0]["environment"]["device"] == benchmark.cpu_name()


def test_sizes_are_parsed_and_bad_ones_explained():
    assert benchmark.parse_size("336x448") == (336, 448)
    with pytest.raises(ValueError, match="HEIGHTxWIDTH"):
        benchmark.parse_size("336by448")


def test_time_ratios_are_the_median_of_each_repeats_ratio_with_their_range():
    cases = {
        "plain_clip": {"times_ms": [10.0, 20.0, 30.0], "memory": None},
        "scclip_batched": {"times_ms": [11.0, 18.0, 36.0], "memory": None},
        "scclip_one_window": {"times_ms": [22.0, 27.0, 36.0], "memory": None},
    }
    ratios = benchmark.result_ratios(cases)
    # (b)/(a) per repeat 1.1, 0.9 and 1.2; the ratio of the median times would be 18 / 20 = 0.9.
    assert ratios["time_batched_over_plain"] == pytest.approx(1.1)
    assert ratios["time_batched_over_plain_range"] == pytest.approx([0.9, 1.2])
    # (c)/(b) per repeat 2, 1.5 and 1.
    assert ratios["time_one_window_over_batched"] == pytest.approx(1.5)
    assert ratios["time_one_window_over_batched_range"] == pytest.approx([1.0, 2.0])
    assert benchmark.time_ratio_cell(ratios, "time_batched_over_plain") == "1.100 (0.90–1.20)"
    assert ratios["memory_batched_over_plain"] is None


def expected_agreement(logits: torch.Tensor, reference_logits: torch.Tensor) -> dict:
    """The agreement measures computed directly: labels, margins and the float32 map's label counts."""
    reference_labels = reference_logits.argmax(1)
    changed = logits.argmax(1) != reference_labels
    best, second = reference_logits.topk(2, dim=1).values.unbind(1)
    margins = best - second
    _, counts = reference_labels.unique(return_counts=True)
    return {
        "percent": 100 * (1 - changed.float().mean().item()),
        "changed_pixels_max_float32_margin": margins[changed].max().item() if changed.any() else None,
        "median_float32_margin": margins.median().item(),
        "float32_labels_used": len(counts),
        "float32_most_frequent_label_percent": 100 * counts.max().item() / reference_labels.numel(),
        "mean_abs_logit_difference": (logits - reference_logits).abs().mean().item(),
        "max_abs_logit_difference": (logits - reference_logits).abs().max().item(),
    }


def cells_of(markdown: str, case: str) -> list[str]:
    """The cells of the half-precision table's row of `case` for the tiny model at 64x96."""
    title = {"scclip_batched": "(b) SC-CLIP", "plain_clip": "(a) plain CLIP"}[case]
    row = next(line for line in markdown.splitlines() if line.startswith(f"| tiny | 64x96 | {title} | "))
    return row.strip("| ").split(" | ")


@pytest.mark.parametrize("autocast", [False, True], ids=["bfloat16-weights", "autocast"])
def test_half_precision_run_reports_label_agreement_with_float32(tmp_path, tiny_model, autocast):
    argv = "--models tiny --sizes 64x96 --dtype bfloat16 --repeats 1 --warmup 0 --profile-runs 1".split()
    argv += ["--autocast"] * autocast + ["--output", str(tmp_path / "r.json"), "--markdown", str(tmp_path / "r.md")]
    report = benchmark.main(argv)
    assert report["environment"]["autocast"] is autocast
    entry = report["results"][0]["sizes"]["64x96"]
    agreement = entry["label_agreement_with_float32"]
    percent = agreement["scclip_batched"]["percent"]
    assert entry["targets_met"]["label_agreement_with_float32"] == (percent >= 99.5)
    precision = "bfloat16 autocast (float32 weights)" if autocast else "bfloat16"
    markdown = (tmp_path / "r.md").read_text()
    assert f"## {precision} against float32" in markdown
    for name in ("scclip_batched", "plain_clip"):
        cells = cells_of(markdown, name)
        assert cells[3:6] == [
            f"{agreement[name]['percent']:.3f}%",
            str(agreement[name]["float32_labels_used"]),
            f"{agreement[name]['float32_most_frequent_label_percent']:.1f}%",
        ]
        assert cells[9] == f"{agreement[name]['max_abs_logit_difference']:.2e}"
    # The same measures by hand, on the benchmark's own inputs: bfloat16 weights, or float32 ones under autocast.
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(1, 3, 64, 96, generator=generator)
    text_embeds = torch.randn(21, tiny_model.config.projection_dim, generator=generator)
    low = tiny_model
    if not autocast:
        low = benchmark.random_scclip_model(benchmark.MODEL_SHAPES["tiny"], benchmark.character_tokenizer(), seed=0)
        low.to(torch.bfloat16)
    with torch.inference_mode():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            scclip = low(pixel_values, text_embeds=text_embeds).logits
            plain = low.slide_inference(pixel_values, text_embeds, low.get_plain_clip_dense_features)
        scclip_reference = tiny_model(pixel_values, text_embeds=text_embeds).logits
        plain_reference = tiny_model.slide_inference(
            pixel_values, text_embeds, tiny_model.get_plain_clip_dense_features
        )
        # Every pair of pixels' float32 features in the first (top-left, 64-pixel) window, by a loop.
        window = pixel_values[..., :64, :64]
        feature_maps = {
            "scclip_batched": tiny_model.get_dense_image_features(window),
            "plain_clip": tiny_model.get_plain_clip_dense_features(window),
        }
    for name, logits, reference in (
        ("scclip_batched", scclip, scclip_reference),
        ("plain_clip", plain, plain_reference),
    ):
        pixels = feature_maps[name][0].flatten(1).T
        least_cosine = min(F.cosine_similarity(pixel, pixels, dim=-1).min().item() for pixel in pixels)
        expected = dict(expected_agreement(logits, reference), float32_least_feature_cosine=least_cosine)
        assert agreement[name] == pytest.approx(expected, abs=1e-6)
        assert cells_of(markdown, name)[10] == f"{least_cosine:.4f}"
    assert agreement["scclip_batched"]["float32_least_feature_cosine"] > 0.99  # the CLS residual dominates
    # Plain CLIP's map has many labels and some change, so its match with the hand computation pins the precision
    # the benchmark ran in; SC-CLIP's map of random weights has one label (see the benchmark's docstring).
    assert 50 < agreement["plain_clip"]["percent"] < 100


def test_float32_runs_report_no_agreement(run):
    report, markdown = run
    assert all(entry["label_agreement_with_float32"] is None for entry in report["results"][0]["sizes"].values())
    assert "against float32" not in markdown


def test_window_batch_size_option_reaches_the_model(tmp_path):
    argv = "--models tiny --sizes 64x96 --window-batch-size 3 --repeats 1 --warmup 0 --profile-runs 1".split()
    report = benchmark.main([*argv, "--output", str(tmp_path / "r.json"), "--markdown", str(tmp_path / "r.md")])
    assert report["environment"]["window_batch_size"] == 3
    assert report["results"][0]["config"]["window_batch_size"] == 3
    assert "3 windows per encoder pass" in (tmp_path / "r.md").read_text()
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--window-batch-size", "0"])


def test_autocast_needs_a_half_precision_dtype(capsys):
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--autocast"])
    assert "add --dtype bfloat16 or float16" in capsys.readouterr().err
