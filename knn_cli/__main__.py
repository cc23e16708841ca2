from knn_cli.cli import main

main()
