from electricctl.cli.main import main

main()
