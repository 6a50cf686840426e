"""A page to try a generator in the browser (Gradio): sample a mosaic, or see an image's tokens and completions.

    python -m pipelines.demo                          # the newest prior run, else the shipped generator
    python -m pipelines.demo --prior you/my-generator --port 7861

Sample: pick a class, a guidance schedule (its start and end scales, and how much of the grid goes unguided first)
and a seed, get a mosaic. Tokens: upload an image; it is fitted to the tokenizer's size, encoded, and decoded back
(what the tokens keep of it), and completions keep its first token rows and sample the rest. Gradio comes from the
optional extra: pip install -e '.[demo]'.
"""

import importlib.util
from pathlib import Path

import torch

from generation import ImageGenerator
from generation.pretrained import choose_prior
from pipelines import cli
from prior import sampling
from store.images import fit_image
from store.pictures import mosaic_array

# The menu entries besides the class names: what a choice means is prior.sampling's rule (resolve_labels).
ANY_CLASS, NO_LABEL_CHOICE = "any class (the training mix)", "no label (unguided)"


def build_parser():
    parser = cli.ArgumentParser(prog="python -m pipelines.demo",
                                description="Serve a page (Gradio) to sample from a generator and see an image's "
                                            "tokens, on this machine.")
    cli.add_run_choice_flag(parser, "prior", "serve",
                            default="the newest under OUTPUT_ROOT/prior; with none, the shipped Fashion-MNIST "
                                    "generator in checkpoints/fashion-mnist")
    cli.add_output_root_flag(parser)
    p = parser.add_argument
    p("--host", default="127.0.0.1", help="the address to serve on; 0.0.0.0 opens it to the network "
                                          "(default: 127.0.0.1, this machine only)")
    p("--port", type=cli.positive_int, default=7860, help="the port to serve on (default: 7860)")
    p("--max-count", type=cli.positive_int, default=64, help="the most images one click may draw (default: 64)")
    return parser


def label_choices(generator):
    """The class menu: the training mix, each class by name, and "no label" for a conditional prior."""
    names = list(generator.run.class_names or [])
    return [ANY_CLASS, *names, NO_LABEL_CHOICE] if names and generator.model.config.num_classes else [ANY_CLASS]


def _label(choice):
    return None if choice in (None, ANY_CLASS) else sampling.NO_LABEL if choice == NO_LABEL_CHOICE else choice


def _guidance(generator, label, schedule, start, end, unguided):
    """The guidance settings a request takes: the page's schedule from start to end (a constant: end alone) after
    the first `unguided` fraction of the grid, but none for the "no label" draw or an unconditional prior (nothing
    to guide towards); the training mix is guided towards each sample's class, as `sample` guides it."""
    if label == sampling.NO_LABEL or not generator.model.config.num_classes:
        return {}
    guidance_from = float(unguided) if float(unguided) > 0 else 0
    if schedule == "constant":
        return {"guidance_scale": float(end), "guidance_schedule": schedule, "guidance_from": guidance_from}
    return {"guidance_scale": (float(start), float(end)), "guidance_schedule": schedule,
            "guidance_from": guidance_from}


def sample_mosaic(generator, choice, schedule, start, end, unguided, seed, count):
    """A mosaic (H, W, 3) uint8 of `count` samples of the class chosen in the menu, drawn as `pipelines.sample`
    draws them at this seed and guidance (schedule from start to end, constant: end, after the first `unguided`
    fraction of the grid)."""
    label = _label(choice)
    images, _ = generator.sample(int(count), label, seed=int(seed),
                                 **_guidance(generator, label, schedule, start, end, unguided))
    return mosaic_array(images)


def token_views(generator, picture, choice, schedule, start, end, unguided, seed, keep_rows, count):
    """(the picture as the tokenizer takes it beside its decoded tokens, completions) of an uploaded picture (a PIL
    image of any size and mode): mosaics (H, W, 3) uint8. The completions keep its first keep_rows token rows."""
    if picture is None:
        raise ValueError("upload an image first")
    tokenizer = generator.tokenizer
    channels, size, _ = tokenizer.image_shape
    image = fit_image(picture, channels, size)
    tokens = tokenizer.encode(image.to(tokenizer.device))
    reconstruction = tokenizer.decode(tokens).float().cpu()
    original = image.float() / 255
    completion = generator.completion(image, int(count), min(int(keep_rows), tokenizer.grid_shape[0]))
    label = _label(choice)
    completions, _ = generator.sample(int(count), label, seed=int(seed), **completion,
                                      **_guidance(generator, label, schedule, start, end, unguided))
    return mosaic_array(torch.cat([original, reconstruction]), columns=2), mosaic_array(completions)


def default_guidance():
    """The page's first guidance choice: SamplingConfig's (schedule, start, end, the unguided fraction of the
    grid)."""
    defaults = sampling.SamplingConfig()
    scale = defaults.guidance_scale
    start, end = scale if sampling.is_ramp(scale) else (scale, scale)
    first = defaults.guidance_from  # the page offers a fraction of the grid, which a default position is not
    unguided = 0.0 if sampling.is_int(first) else first
    return (defaults.guidance_schedule if sampling.is_ramp(scale) else "constant"), start, end, unguided


def build_demo(generator, max_count=64):
    """The page (a gradio.Blocks) for a generator."""
    import gradio as gr  # the optional extra: imported only when a page is built

    def shown(function):
        """function's result, a bad request (ValueError) shown on the page as one line instead of a traceback."""
        def call(*args):
            try:
                return function(generator, *args)
            except ValueError as error:
                raise gr.Error(cli.one_line(error)) from None
        return call

    choices = label_choices(generator)
    with gr.Blocks(title="vqprior demo", analytics_enabled=False) as page:
        gr.Markdown(f"## vqprior: `{Path(generator.run_dir).name}`\n"
                    "A VQ-VAE tokenizer and a PixelCNN prior over its tokens.")
        with gr.Row():
            choice = gr.Dropdown(choices, value=choices[0], label="class", elem_id="class")
            seed = gr.Number(value=0, precision=0, minimum=0, label="seed", elem_id="seed")
        schedule_value, start_value, end_value, unguided_value = default_guidance()
        with gr.Row():
            schedule = gr.Dropdown(list(sampling.SCHEDULES), value=schedule_value, elem_id="guidance-schedule",
                                   label="guidance along the grid (classifier-free; constant: the end scale)")
            start = gr.Slider(0, 5, value=start_value, step=0.1, label="guidance at the first token (1: none)",
                              elem_id="guidance-start")
            end = gr.Slider(0, 5, value=end_value, step=0.1, label="guidance at the last token (1: none)",
                            elem_id="guidance-end")
            unguided = gr.Slider(0, 0.9, value=unguided_value, step=0.05, elem_id="guidance-unguided",
                                 label="unguided first part of the grid (raster order; the schedule runs after it)")
        guidance = [schedule, start, end, unguided]
        with gr.Tab("Sample"):
            count = gr.Slider(1, max_count, value=min(16, max_count), step=1, label="images", elem_id="count")
            sample_button = gr.Button("Sample", variant="primary", elem_id="sample-button")
            samples = gr.Image(label="samples", type="numpy", interactive=False, elem_id="samples")
            sample_button.click(shown(sample_mosaic), [choice, *guidance, seed, count], samples)
        with gr.Tab("Tokens"):
            with gr.Row():
                picture = gr.Image(label="your image", type="pil", sources=["upload", "clipboard"],
                                   elem_id="upload")
                both = gr.Image(label="as the tokenizer takes it | decoded from its tokens", type="numpy",
                                interactive=False, elem_id="reconstruction")
            keep_rows = gr.Slider(0, generator.tokenizer.grid_shape[0], value=generator.tokenizer.grid_shape[0] // 2,
                                  step=1, label="token rows kept", elem_id="keep-rows")
            completions_count = gr.Slider(1, max_count, value=min(8, max_count), step=1, label="completions")
            tokens_button = gr.Button("Encode and complete", variant="primary", elem_id="tokens-button")
            completions = gr.Image(label="completions", type="numpy", interactive=False, elem_id="completions")
            tokens_button.click(shown(token_views), [picture, choice, *guidance, seed, keep_rows, completions_count],
                                [both, completions])
    return page


def launch(page, host, port, wait=True):
    """Serve the page on host:port, on this machine only (no share link, no usage reports, no Node server);
    wait False returns once it answers (for a caller that goes on, as the test's browser does)."""
    page.queue().launch(server_name=host, server_port=port, share=False, ssr_mode=False, quiet=not wait,
                        prevent_thread_lock=not wait)


def main(argv=None):
    args = build_parser().parse_args(None if argv is None else [str(a) for a in argv])
    if importlib.util.find_spec("gradio") is None:  # refused in one line before anything is loaded
        raise ValueError("the demo needs Gradio: pip install -e '.[demo]'")
    generator = ImageGenerator.load(choose_prior(args.prior, args.output_root))
    page = build_demo(generator, args.max_count)
    print(f"serving {generator.run_dir} on http://{args.host}:{args.port} (Ctrl+C ends it)")
    launch(page, args.host, args.port)


if __name__ == "__main__":
    cli.run(main, build_parser)
