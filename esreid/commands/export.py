"""``esreid export``: the ONNX graph of a trained model, checked with onnxruntime against PyTorch."""

from __future__ import annotations

from esreid.commands._args import CONFIG, command, trained_model

ORDER = 100


def add_parser(sub) -> None:
    p = command(sub, "export", "ONNX graph of a trained model, checked with onnxruntime",
                [f"esreid export --config {CONFIG} --weights W.pth --out model.onnx --dynamic-batch test.flip=false"],
                "A trained model as an ONNX graph (normalised images -> retrieval features), checked with "
                "onnxruntime against PyTorch. Needs the onnx extra.", overrides=True, handler=run)
    trained_model(p)
    p.add_argument("--out", required=True, help="ONNX file to write")
    p.add_argument("--height", type=int, help="input height (default: data.height)")
    p.add_argument("--width", type=int, help="input width (default: data.width)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default: %(default)s)")
    p.add_argument("--dynamic-batch", action="store_true", help="a dynamic batch axis (default: batch fixed to 1)")


def run(args) -> int:
    from esreid.export import export_model

    export_model(args.config, args.weights, args.out, args.overrides, height=args.height, width=args.width,
                 opset=args.opset, dynamic_batch=args.dynamic_batch)
    return 0
