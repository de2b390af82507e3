from codeyard.cli import main

main()
