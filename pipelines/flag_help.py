"""The help of every config field that a command offers as a flag, and the values a flag takes where they are a
closed list: what a user reads in --help lives here with the flags (pipelines.cli.add_config_flags reads it),
and the config dataclasses of the libraries stay code. Keyed by the config class's name, so that every command
does not import every library (evaluation's, with its plotting, costs seconds at each start)."""

from prior.model import ARCHS
from tokenizer.losses import RECONSTRUCTION_LOSSES
from tokenizer.model import DOWNSAMPLE_FACTORS, QUANTIZERS
from tokenizer.quantizers import ESTIMATORS
from training.config import TRACKERS

HELP = {
    "DataConfig": {
        "dataset": "fashion-mnist (Debian's files, offline), mnist or cifar10 (downloaded to --data-dir), or "
                   "folder:PATH (any folder of images; every tenth file, sorted by path, is the test split)",
        "data_dir": "where mnist and cifar10 are downloaded to, and fashion-mnist when --fashion-mnist-dir does not "
                    "hold it (into DATA_DIR/fashion-mnist)",
        "image_size": "resize every image to this size, square (0: as they are needed: to train, the data set's own "
                      "size, 28 for folders; to encode, the size the tokenizer takes)",
        "fashion_mnist_dir": "the folder of the Fashion-MNIST .gz files (train-images-idx3-ubyte.gz ...); where it "
                             "does not hold them, they are downloaded once into DATA_DIR/fashion-mnist",
        "fashion_mnist_mirror": "the address Fashion-MNIST's files are downloaded from, a folder URL (default: "
                                "torchvision's mirror); the files are checked against torchvision's MD5 sums "
                                "whatever the address",
    },
    "TrainConfig": {
        "epochs": "passes over the training split",
        "batch_size": "images (or grids) per step, per process",
        "learning_rate": "peak learning rate of AdamW",
        "warmup_steps": "steps of linear warm-up before the cosine decay",
        "min_lr_ratio": "the cosine decay ends at this fraction of the peak",
        "weight_decay": "AdamW weight decay",
        "grad_clip": "clip the gradient norm to this (0: no clipping)",
        "seed": "seed for weights, data order and restarts",
        "mixed_precision": "no, fp16 or bf16 (through accelerate); auto: bf16 where the hardware computes in it (a "
                           "GPU that supports it, a CPU with AVX512-BF16 or AMX), else no. The run's config.json "
                           "keeps the choice made",
        "log_every": "steps between metrics lines",
        "checkpoint_every": "steps between resumable checkpoints",
        "log_with": "also send the metrics to this tracker of accelerate's (tensorboard: event files in "
                    "RUN/trackers/; wandb, mlflow, comet_ml, aim, clearml, dvclive, swanlab, trackio: their own "
                    "places), beside metrics.jsonl; the tracker's package must be installed (none: metrics.jsonl "
                    "only)",
        "weight_ema_decay": "also keep an exponential moving average of the weights with this decay per step, saved "
                            "beside the raw weights as model_ema.safetensors and used from then on (evaluation, "
                            "sampling, encoding) (0: none)",
    },
    "TokenizerConfig": {
        "image_channels": "channels of the input images: 1 (grey) or 3 (RGB)",
        "image_size": "height and width of the images; must be divisible by the downsampling factor",
        "downsample": "how much smaller the token grid is than the image, per side: 4, 8 or 16 (2, 3 or 4 stride-2 "
                      "stages); 28x28 at 4 is a 7x7 grid, 64x64 at 8 an 8x8 grid",
        "hidden_channels": "width of the encoder and decoder convolutions at the lowest resolution",
        "stage_channels": "comma-separated widths of the stride-2 stages, highest resolution first, one per stage "
                          "(default: half of --hidden-channels, then --hidden-channels for every further stage)",
        "stage_residual_blocks": "residual blocks at each resolution above the lowest, in the encoder and in the "
                                 "decoder",
        "residual_channels": "bottleneck width inside each residual block",
        "num_residual_blocks": "residual blocks at the lowest resolution, in the encoder and in the decoder",
        "latent_dim": "channels of the encoder output z",
        "hierarchy": "levels of codes: 1, one map; 2, VQ-VAE-2's top map (half the grid again) and bottom map",
        "quantizer": "vq (nearest code), residual (--depth chained codebooks), simvq (frozen basis x learned map), "
                     "fsq (rounded scalars, --fsq-levels), binary (signs of log2(K) dimensions)",
        "codebook_size": "number of codes K per token; tokens lie in 0..K-1 (fsq: the product of --fsq-levels, set "
                         "for you; binary: a power of two)",
        "depth": "residual only: codebooks in the chain, i.e. tokens per grid position (index maps gain this axis)",
        "fsq_levels": "fsq only: comma-separated levels per dimension; 8,5,5,5 gives 1000 codes",
        "estimator": "gradient through the code lookup (vq, residual, simvq): ste (straight-through copy) or "
                     "rotation (the rotation trick of Fifty et al. 2024)",
        "code_dim": "look codes up in a learned projection of z to this many dimensions (0: in z itself)",
        "beta": "weight of the commitment loss beta |z - sg[e]|^2",
        "codebook_update": "how codes learn: ema (moving averages of assigned vectors) or loss (codebook loss, "
                           "optimizer)",
        "codebook_ema_decay": "decay of the EMA codebook statistics (with --codebook-update ema)",
        "cosine": "l2-normalise codes and encoder outputs before the lookup",
        "kmeans_init": "initialise the codebook by k-means on the first batch",
        "dead_code_threshold": "restart a code whose EMA usage falls under this many vectors per batch (0: never)",
        "entropy_weight": "fsq and binary: weight of the entropy penalty of lookup-free quantization, which spreads "
                          "the tokens over all codes (0: none)",
    },
    "TokenizerLossConfig": {
        "reconstruction_loss": "pixel loss: l2 (squared error, the VQ-VAE paper's) or l1 (absolute error, VQGAN's)",
        "adversarial_weight": "weight of VQGAN's adversarial loss, times the adaptive weight (0: off; VQGAN uses 0.8)",
        "discriminator_start": "training step from which the discriminator trains and its loss reaches the tokenizer",
        "discriminator_channels": "width of the discriminator's first layer",
        "discriminator_layers": "stride-2 layers of the patch discriminator (0: sized to the image, 1 to 3)",
    },
    "PriorConfig": {
        "arch": "body of the prior: 'gated' (Gated PixelCNN, no blind spot), 'pixelcnn' (original, blind spot) or "
                "'pixelsnail' (pixelcnn with causal self-attention blocks between its residual blocks)",
        "codebook_size": "number of distinct tokens, the tokenizer's codebook size; the prior predicts one of these",
        "grid_height": "rows of the token grids the prior is trained on and samples",
        "grid_width": "columns of the token grids the prior is trained on and samples",
        "embed_dim": "width of the token embedding the first layer reads",
        "hidden_channels": "channels of every hidden layer (gated blocks use twice this before their gates)",
        "num_layers": "masked layers: the type-A first layer plus num_layers - 1 type-B blocks",
        "first_kernel_size": "odd kernel size (>= 3) of the type-A first layer, which sees the neighbours of each "
                             "position",
        "kernel_size": "odd kernel size of the type-B layers after the first",
        "attention_every": "pixelsnail: a causal self-attention block after every this many residual blocks",
        "attention_heads": "pixelsnail: heads of each attention block (hidden_channels must be a multiple)",
        "num_classes": "classes to condition on; 0 = unconditional, > 0 adds a 'no label' class for classifier-free "
                       "guidance",
        "depth": "tokens per position (a residual quantizer's levels), modelled as ordered channel groups",
        "condition_codebook_size": "codebook size of the token map the prior is conditioned on (0: no such map)",
        "condition_height": "rows of the token map conditioned on",
        "condition_width": "columns of the token map conditioned on",
    },
    "ClassifierConfig": {
        "image_channels": "channels of the images: 1 or 3",
        "image_size": "height and width of the images, a multiple of 4",
        "num_classes": "classes of the data set",
        "width": "channels of the first block; the next two have 2x and 4x",
        "feature_dim": "dimensions of the penultimate features",
    },
    "ClassifierTrainConfig": {
        "classifier_epochs": "passes over the training split when the reference classifier is first trained",
        "classifier_batch_size": "images per step of the classifier",
        "classifier_learning_rate": "peak learning rate of AdamW (one-cycle schedule) for the classifier",
        "classifier_seed": "seed of the classifier's weights and data order",
    },
}

CHOICES = {
    "TrainConfig": {"mixed_precision": ["no", "fp16", "bf16", "auto"], "log_with": ["none", *TRACKERS]},
    "TokenizerConfig": {"downsample": DOWNSAMPLE_FACTORS, "hierarchy": (1, 2), "quantizer": QUANTIZERS,
                        "estimator": ESTIMATORS, "codebook_update": ["ema", "loss"]},
    "TokenizerLossConfig": {"reconstruction_loss": RECONSTRUCTION_LOSSES},
    "PriorConfig": {"arch": ARCHS},
}
