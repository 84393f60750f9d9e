"""Study recipes: S1 skip_ae, S3 pretrain, S4 dsc. Each exposes train_main(argv) and reproduce_main(argv)."""
