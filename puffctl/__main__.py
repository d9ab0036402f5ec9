from puffctl.entry import main

main()
