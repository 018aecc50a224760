from runnable_k8s.cli import main

main()
