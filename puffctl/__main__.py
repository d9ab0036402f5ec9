from puffctl.cli import main

main()
