"""Training a tokenizer: a new run's config, what the loop fits, the loss of one step, the weights it keeps, the
reconstruction picture. `python -m pipelines.fit_tokenizer` composes these with the shared training loop and
tokenizer.encoding's dump."""

import torch

from store.pictures import enlarged
from store.runs import atomic_path
from tokenizer.losses import AdversarialTokenizer, TokenizerLossConfig, pixel_loss
from tokenizer.model import TokenizerConfig
from tokenizer.run import DUMP_BATCH_SIZE, TokenizerRun


def new_tokenizer_run(train_set, train, data, loss, dump_batch_size=None, **model):
    """The TokenizerRun of a new tokenizer on a data set's training images (store.images.ImageSet): the image
    channels and size from the images, which must be square, with the other TokenizerConfig fields in model;
    dump_batch_size None: DUMP_BATCH_SIZE (the run keeps it: encoding in batches of another size can flip a
    near-tie's token). A choice the images cannot take is one ValueError."""
    channels, height, width = train_set.images.shape[1:]
    if height != width:
        raise ValueError(f"images must be square, these are {height}x{width}: give a folder of images an "
                         "`image_size` to make them square")
    return TokenizerRun(model=TokenizerConfig(**model, image_channels=channels, image_size=height), train=train,
                        data=data, loss=loss, dump_batch_size=DUMP_BATCH_SIZE if dump_batch_size is None
                        else dump_batch_size)


def trained_module(vqvae, loss):
    """What the training loop fits: the VQ-VAE itself, or with the adversarial loss on, the VQ-VAE and its
    discriminator as one AdversarialTokenizer."""
    return AdversarialTokenizer(vqvae, loss) if loss.adversarial else vqvae


def tokenizer_weights(state, loss):
    """The VQ-VAE's own entries of a state dict of the module trained_module() gave (an AdversarialTokenizer's
    without its discriminator's), e.g. of its averaged weights."""
    if not loss.adversarial:
        return state
    return {name.removeprefix("vqvae."): value for name, value in state.items() if name.startswith("vqvae.")}


def check_discriminator_start(loss, train_config, train_items, processes=1):
    """A one-line refusal of a discriminator_start the run would never reach."""
    total_steps = train_config.epochs * (train_items // (train_config.batch_size * processes))
    if loss.adversarial and loss.discriminator_start >= total_steps:
        raise ValueError(f"`discriminator_start` {loss.discriminator_start} is past the end of training "
                         f"({total_steps} steps): the discriminator would never act")


def tokenizer_step(model, batch, step, loss=TokenizerLossConfig()):
    """(loss, logs) of one batch: pixels and quantizer, plus both adversarial terms for an AdversarialTokenizer."""
    images, _ = batch
    images = images.float() / 255
    if isinstance(getattr(model, "module", model), AdversarialTokenizer):  # (wrapped in DDP across processes)
        return model(images, step)
    _, total, logs, _ = pixel_loss(model, images, loss.reconstruction_loss)
    return total, {"loss": total.item(), **logs}


def save_reconstructions(path, tokenizer, images, count=16):
    """A PNG of `count` images (uint8) above their reconstructions, enlarged to be judged by eye."""
    from torchvision.utils import save_image  # torchvision takes seconds to import: not before it is needed

    originals = images[:count].to(tokenizer.device).float() / 255
    _, reconstructions, _ = tokenizer.reconstruct(originals)
    with atomic_path(path) as tmp:
        save_image(enlarged(torch.cat([originals, reconstructions]).cpu()), tmp, nrow=len(originals), padding=1,
                   format="PNG")
