"""Scenarios where the study meets a real use.

    new_class               pretrain on digits 0-8, then learn class 9 keeping outputs 0-8
    new_class_report        its answer, front table and trade-off figure
    class_sequence          pretrain on 0-4, then learn 5-9 one task at a time (ACC, BWT)
    class_sequence_report   its answer, ACC/BWT figure and per-class recall across tasks
    strategy_settings       every registry strategy with its settings, and what a setting costs
    stats                   Student t intervals over seeds, the front on means, noise or not
    stages                  run a scenario as the batch does, timed stage by stage
"""
