from alft_cli.cli import main

main()
