"""What each bioimage.io consumer needs from a package, as data: one record per rule, each with its source.

`consumers.py` evaluates these records with one small function per kind of check; nothing there names a consumer.
A rule's `source` is where the requirement is written (a repository + path, a URL, a release note); `inferred=True`
marks a rule read from a consumer's code path rather than stated in its documentation, with what it was read from.
Sources were read in 2026 (repositories at their crawled state); a consumer's next release may change them: edit
this table, not the evaluator.

Check kinds (see consumers.CHECKS): weights, format_version, inputs_count, outputs_count, input_axes, data_types,
processing, tags_any, architecture_kwargs, architecture_classes, output_space_sizes.
`when` (optional) lists alternative conditions on the package (tags_any / tags_none); the rule applies when one of
them holds, and always when there are none.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

CONSUMERS: tuple[str, ...] = ("biozoo", "bioimageio.core", "ilastik", "deepImageJ", "BiaPy")


@dataclass(frozen=True)
class Rule:
    consumer: str
    check: str
    allowed: tuple[Any, ...]
    source: str
    why: str
    params: Mapping[str, Any] = field(default_factory=dict)
    when: tuple[Mapping[str, tuple[str, ...]], ...] = ()
    inferred: bool = False


SPEC_DTYPES = ("float32", "float64", "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "bool")
FORMATS_04_05 = ("0.4.", "0.5.")

# ------------------------------------------------------------------------------------------------------ sources
_BIOZOO_DESCR = "biozoo runtime/format/description.py parse_description"
_BIOZOO_PACKAGE = "biozoo runtime/format/package.py _read_rdf"
_BIOZOO_OPS = "biozoo runtime/ops/__init__.py OPS (tests/runtime/test_consumers.py keeps this list equal to it)"
_CORE = "bioimageio.core 0.11.0 (the version biozoo's tests pin)"
_CORE_WEIGHTS = f"{_CORE}: bioimageio/core/common.py SupportedWeightsFormat, one backend per format in backends/"
_CORE_ARCH = (f"{_CORE}: bioimageio/core/digest_spec.py import_callable (a file architecture is imported with its "
              "sha256 checked, 'ensure sha is valid even if perform_io_checks=False'; import_from imports an "
              "installed library)")
_CORE_OPS = f"{_CORE}: bioimageio/core/proc_ops.py get_proc"
_SPEC = "bioimageio.spec 0.5.12: load_description reads model formats 0.4 (converted to 0.5) and 0.5"
_SPEC_DTYPES = "bioimageio.spec 0.5.12 bioimageio/spec/model/v0_5.py IntervalOrRatioDType / NominalOrOrdinalDType"
_ILASTIK_NN = "github.com/ilastik/ilastik ilastik/applets/neuralNetwork/bioimageiodl.py"
_ILASTIK_OPS = "github.com/ilastik/ilastik lazyflow/operators/tiktorch/operators.py OpTikTorchClassifierPredict"
_TIKTORCH_153 = "github.com/ilastik/tiktorch/issues/153 (open: 'multiple input/output tensors' not supported)"
_JDLL = "github.com/bioimage-io/JDLL"
_DIJ_303 = "github.com/deepimagej/deepimagej-plugin/releases/tag/3.0.3 ('Compatibility with Onnx', 'backend to JDLL')"
_BIAPY = ("github.com/BiaPyX/BiaPy biapy/models/__init__.py check_bmz_model_compatibility (the check of "
          "bioimage.io's BiaPy CI)")
_BIAPY_ENV = "github.com/BiaPyX/BiaPy biapy/models/bmz_utils.py create_environment_file_for_model"

_JDLL_OPS = ("binarize", "clip", "ensure_dtype", "fixed_zero_mean_unit_variance", "scale_linear", "scale_range",
             "sigmoid", "zero_mean_unit_variance")
_CORE_OP_IDS = ("binarize", "clip", "ensure_dtype", "fixed_zero_mean_unit_variance", "scale_linear",
                "scale_mean_variance", "scale_range", "sigmoid", "softmax", "stardist_postprocessing",
                "zero_mean_unit_variance")
BIOZOO_OPS = ("binarize", "clip", "ensure_dtype", "fixed_zero_mean_unit_variance", "scale_linear",
              "scale_mean_variance", "scale_range", "sigmoid", "softmax", "stardist_postprocessing",
              "zero_mean_unit_variance")
_BIAPY_SEMANTIC = ({"tags_any": ("semantic-segmentation",)},
                   {"tags_any": ("segmentation",), "tags_none": ("instance-segmentation",)})

RULES: tuple[Rule, ...] = (
    # ---------------------------------------------------------------------------------------------- biozoo
    Rule("biozoo", "weights", ("onnx",), _BIOZOO_DESCR,
         "biozoo runs only ONNX weights (`biozoo convert` adds them from torchscript / pytorch_state_dict)"),
    Rule("biozoo", "format_version", FORMATS_04_05, _BIOZOO_PACKAGE, "biozoo reads formats 0.4.x and 0.5.x"),
    Rule("biozoo", "data_types", (*SPEC_DTYPES, "float16"), f"{_BIOZOO_DESCR} (DTYPES)",
         "the data types biozoo's tensors and ops handle"),
    Rule("biozoo", "processing", BIOZOO_OPS, _BIOZOO_OPS, "the pre/post-processing ops biozoo implements",
         params={"stage": "both"}),
    # ------------------------------------------------------------------------------------------ bioimageio.core
    Rule("bioimageio.core", "weights",
         ("pytorch_state_dict", "tensorflow_saved_model_bundle", "torchscript", "onnx", "keras_v3", "keras_hdf5"),
         f"{_CORE_WEIGHTS}; {_CORE_ARCH}",
         "the weight formats bioimageio.core has a backend for (the framework must be installed)",
         params={"architecture": "file_or_library"}),
    Rule("bioimageio.core", "format_version", FORMATS_04_05, _SPEC, "bioimageio.core reads models through the spec"),
    Rule("bioimageio.core", "data_types", SPEC_DTYPES, _SPEC_DTYPES, "the data types the spec allows"),
    Rule("bioimageio.core", "processing", _CORE_OP_IDS, _CORE_OPS,
         "the pre/post-processing ops bioimageio.core implements (stardist_postprocessing needs `pip install "
         "stardist`)", params={"stage": "both"}),
    # ---------------------------------------------------------------------------------------------- ilastik
    Rule("ilastik", "weights", ("torchscript", "pytorch_state_dict"),
         f"{_ILASTIK_NN} BIOIMAGEIO_WEIGHTS_PRIORITY = ('torchscript', 'pytorch_state_dict'); github.com/ilastik/"
         "tiktorch README (ilastik ships no tensorflow runtime). bioimage.io's older table (github.com/bioimage-io/"
         "spec-bioimage-io scripts/generate_weight_formats_overview.py consumer_defaults) also lists onnx, which "
         "the current ilastik downloader does not pack",
         "ilastik's Neural Network workflow packs only torchscript or pytorch_state_dict weights for its tiktorch "
         "backend", params={"architecture": "file"}),
    Rule("ilastik", "format_version", FORMATS_04_05,
         f"{_ILASTIK_NN} (load_description(..., format_version='latest') with bioimageio.spec)",
         "ilastik loads descriptions with bioimageio.spec, updated to the latest format"),
    Rule("ilastik", "inputs_count", (1,), f"{_TIKTORCH_153}; {_ILASTIK_OPS} (get_halos(...)[0], "
                                          "get_input_shapes(...)[0])",
         "ilastik feeds one image to the network"),
    Rule("ilastik", "outputs_count", (1,), f"{_TIKTORCH_153}; {_ILASTIK_OPS} (one PMaps output)",
         "ilastik shows one prediction map per network"),
    Rule("ilastik", "output_space_sizes", ("fixed", "reference"),
         f"{_ILASTIK_OPS}: it cuts each predicted block to the requested region of the input image",
         "ilastik tiles the image and needs outputs on the input's pixel grid, not data-dependent lists",
         inferred=True),
    # ------------------------------------------------------------------------------------------- deepImageJ
    Rule("deepImageJ", "weights", ("torchscript", "tensorflow_saved_model_bundle", "onnx"),
         f"{_JDLL} README.md 'Supported engines' (PyTorch as torchscript, TensorFlow saved model bundle, ONNX; "
         f"keras is not supported); {_DIJ_303}; ONNX opsets: {_JDLL} src/main/resources/supportedVersions.json "
         "(opsets 8 to 18)",
         "deepImageJ 3 runs models through JDLL's Java engines; a state dict needs Python, which they lack",
         params={"onnx_max_opset": 18}),
    Rule("deepImageJ", "format_version", FORMATS_04_05,
         f"{_JDLL} src/main/java/io/bioimage/modelrunner/bioimageio/description/ModelDescriptorFactory.java "
         "('JDLL only supports the Bioimage.io model specs 0.4 and 0.5')", "JDLL reads formats 0.4 and 0.5"),
    Rule("deepImageJ", "processing", _JDLL_OPS,
         f"{_JDLL} src/main/java/io/bioimage/modelrunner/model/processing/TransformationInstance.java (an op id "
         "must name a <CamelCase>Transformation class in io.bioimage.modelrunner.transformations, else 'The method "
         "does not exist in the Bioimage.io framework'); that package holds Binarize, Clip, EnsureDtype, "
         "FixedZeroMeanUnitVariance, ScaleLinear, ScaleRange, Sigmoid, ZeroMeanUnitVariance",
         "the pre/post-processing ops JDLL implements (JDLL's separate StarDist path recognises TensorFlow StarDist "
         "models by name and config.stardist, not the spec's stardist_postprocessing op)", params={"stage": "both"}),
    # ------------------------------------------------------------------------------------------------ BiaPy
    Rule("BiaPy", "weights", ("pytorch_state_dict",), f"{_BIAPY}; architecture: {_CORE_ARCH}; libraries: "
                                                      f"{_BIAPY_ENV}",
         "BiaPy accepts only PyTorch state dict models, rebuilt with bioimageio.core's load_torch_model",
         params={"architecture": "file", "import_from": ("biapy", "torchvision", "timm")}),
    Rule("BiaPy", "format_version", FORMATS_04_05, f"{_BIAPY} (ModelDescr v0_4 / v0_5)", "BiaPy reads 0.4 and 0.5"),
    Rule("BiaPy", "inputs_count", (1,), _BIAPY, "'Model needs to have a single input'"),
    Rule("BiaPy", "architecture_kwargs", (), _BIAPY,
         "BiaPy reads the architecture's kwargs ('Couldn't extract kwargs') and refuses a postprocessing kwarg "
         "('Currently no postprocessing is supported')", params={"forbidden": ("postprocessing",)}),
    Rule("BiaPy", "tags_any", ("semantic-segmentation", "segmentation", "instance-segmentation", "detection",
                               "denoising", "super-resolution", "superresolution", "self-supervision",
                               "classification", "pix2pix", "image-reconstruction", "image-to-image",
                               "image-restoration"), _BIAPY,
         "BiaPy picks its workflow from the tags ('no workflow tag recognized')"),
    Rule("BiaPy", "architecture_classes", ("n_classes", "out_channels", "output_channels", "classes"), _BIAPY,
         "for semantic segmentation BiaPy reads the number of classes from the kwargs, or assumes 1 for its own "
         "architectures ('Couldn't find the classes this model is returning')",
         params={"known_architectures": ("unet", "resunet", "resunet++", "seunet", "attention_unet", "resunet_se",
                                         "unetr", "multiresunet", "unext_v1", "unext_v2", "hrnet")},
         when=_BIAPY_SEMANTIC),
    Rule("BiaPy", "input_axes", ("bcyx", "bczyx"), _BIAPY,
         "'Accepting models only with ['bcyx', 'bczyx'] axis order'"),
    Rule("BiaPy", "processing", ("zero_mean_unit_variance", "fixed_zero_mean_unit_variance", "scale_range",
                                 "scale_linear"), _BIAPY,
         "BiaPy maps at most one preprocessing step (float ensure_dtype casts aside) to its own normalization "
         "('More than one preprocessing from BMZ not implemented yet', 'Not recognized preprocessing')",
         params={"stage": "pre", "max_steps": 1, "ignore_float_casts": True}),
    Rule("BiaPy", "processing", (), f"{_BIAPY} (reads kwargs['min_percentile'] / ['max_percentile'] of scale_range "
                                    "without a default)",
         "BiaPy needs scale_range's percentiles written out; bioimageio.spec's writer leaves out 0 and 100 (the "
         "defaults), and BiaPy then fails with a KeyError",
         params={"stage": "pre", "required_kwargs": {"scale_range": ("min_percentile", "max_percentile")}},
         inferred=True),
)
